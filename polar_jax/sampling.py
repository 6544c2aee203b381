"""Generation with a KV cache: one prefill of the (right-padded) prompts, then a compiled
decode loop of one token per step, with HF-style sampling (temperature, top-k, top-p),
stop tokens and repetition-loop truncation.

    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=4096,
                              stop_ids=(eos_id,))          # POLAR's trajectory sampling
    out = generate(cfg, params, prompt_bt, prompt_lengths_b, sampling, jax.random.key(0))
    out.tokens_bn, out.logprobs_bn, out.lengths_b, out.truncated_loop_b

Rules, per row (`advance`; the continuous-batching engine, `polar_jax.engine`, applies the same):
- Randomness: row b draws its token i with fold_in(key_b, i), key_b = `row_keys(rng, B)[b]`
  (fold_in(rng, b) for one key, or the B keys given): a row's output depends on its prompt
  and its key only, never on the rest of its batch.
- A row makes at most its budget of tokens (`max_new_b`, default `max_new_tokens`).
- A stop token (any of `stop_ids`) ends the row; it is KEPT in `tokens_bn` and counted in
  `lengths_b` (strip it when decoding if unwanted). Everything after is 0.
- Repetition loop (when `loop_max_ngram > 0`): after each new token, if the row's generated
  tokens end with some block of n tokens (1 <= n <= loop_max_ngram) written `loop_repeats`
  times in a row, the row stops and is truncated to keep the FIRST occurrence of the block
  only: the (loop_repeats - 1) * n repeated tokens are removed (set to 0). When several n
  match at the same step the smallest n wins. Only generated tokens count (never the
  prompt). `truncated_loop_b` flags such rows. `find_repetition_loop` applies the same rule
  to finished token arrays.
- `logprobs_bn[b, i]` is log p(tokens_bn[b, i] | prefix) under the model's UNFILTERED
  distribution (raw logits, temperature 1, no top-k / top-p), 0 where the token is 0-padding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How `generate` picks tokens and when a row ends (hashable: a static jit argument).

    temperature: 0 = greedy (argmax, first index on ties); else logits are divided by it.
    top_k: keep the k most likely tokens (ties with the k-th kept too); 0 = off.
    top_p: keep the smallest most-likely-first set whose probability reaches top_p (ties
        with the last kept token kept too; at least one token always); 1.0 = off.
    max_new_tokens: N, the length of the outputs.
    stop_ids: tokens that end a row (EOS and others); kept in the output.
    loop_max_ngram, loop_repeats: the repetition-loop rule (module docstring); 0 = off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop_ids: tuple[int, ...] = ()
    loop_max_ngram: int = 0
    loop_repeats: int = 4

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.loop_max_ngram < 0 or (self.loop_max_ngram and self.loop_repeats < 2):
            raise ValueError("loop_max_ngram must be >= 0 and loop_repeats >= 2")
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

    @classmethod
    def polar(cls, stop_ids=(), max_new_tokens: int = 4096, **changes) -> SamplingConfig:
        """The paper's trajectory sampling: temperature 1.0, top-p 0.9, top-k 50, 4096 tokens,
        loops truncated (blocks of up to 32 tokens repeated 4 times: a choice of this library)."""
        base = dict(
            temperature=1.0,
            top_k=50,
            top_p=0.9,
            max_new_tokens=max_new_tokens,
            stop_ids=tuple(stop_ids),
            loop_max_ngram=32,
            loop_repeats=4,
        )
        return cls(**{**base, **changes})


class Generation(NamedTuple):
    """What `generate` returns."""

    tokens_bn: jax.Array  # int32; 0 after a row stops
    logprobs_bn: jax.Array  # float32; unfiltered model log-prob of each token; 0 after the end
    lengths_b: jax.Array  # int32; tokens kept per row (stop token included)
    truncated_loop_b: jax.Array  # bool; the row was cut by the repetition-loop rule


def filter_logits(logits_bv, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """HF-order warping: divide by temperature, then top-k, then top-p; removed tokens get -inf.

    `jax.random.categorical` on the result samples the filtered distribution. temperature 0
    keeps only the argmax (first index on ties). Ties at a cut-off are kept (top-k and
    top-p alike), so the result never depends on sort order; at least one token survives.
    """
    logits_bv = jnp.asarray(logits_bv, jnp.float32)
    neg_inf = jnp.array(-jnp.inf, jnp.float32)
    if temperature == 0:
        best_b = jnp.argmax(logits_bv, axis=-1)
        keep_bv = jnp.arange(logits_bv.shape[-1]) == best_b[:, None]
        return jnp.where(keep_bv, logits_bv, neg_inf)
    logits_bv = logits_bv / temperature
    vocab = logits_bv.shape[-1]
    top_k = min(top_k, vocab)
    if top_k:
        sorted_bk, _ = jax.lax.top_k(logits_bv, top_k)  # descending
        logits_bv = jnp.where(logits_bv >= sorted_bk[:, -1:], logits_bv, neg_inf)
    if top_p < 1.0:
        if not top_k:
            sorted_bk = -jnp.sort(-logits_bv, axis=-1)
        # Probabilities (after top-k) of the most likely tokens, in descending order; tokens
        # tied with the k-th value sit after position k and cannot move the cut-off.
        lse_b1 = jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True)
        sorted_p_bk = jnp.exp(sorted_bk - lse_b1)
        before_bk = jnp.cumsum(sorted_p_bk, axis=-1) - sorted_p_bk  # mass strictly before
        n_keep_b = jnp.maximum(jnp.sum(before_bk < top_p, axis=-1), 1)
        cut_b1 = jnp.take_along_axis(sorted_bk, (n_keep_b - 1)[:, None], axis=-1)
        logits_bv = jnp.where(logits_bv >= cut_b1, logits_bv, neg_inf)
    return logits_bv


def row_keys(rng, batch: int):
    """One key per row [B]: `rng` itself when it holds B keys, else fold_in(rng, b) for row b.
    Raw uint32 keys (`jax.random.PRNGKey`) are accepted too."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    if rng.ndim == 1:
        if rng.shape[0] != batch:
            raise ValueError(f"{rng.shape[0]} keys for {batch} rows")
        return rng
    return jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(batch))


def _filter_per_shard(logits_bv, sampling: SamplingConfig):
    """`filter_logits` on each device's own rows (`shard_map` over the batch axes of the mesh
    `parallel.use_rules` set), whole rows each. XLA:TPU aborts compiling a `top_k` whose batch
    dimension is partitioned ("Stable sort expects more than 1 operand"; libtpu of jax 0.11);
    rows are independent, so splitting them by hand is exact. Without a mesh: as is."""
    fn = functools.partial(filter_logits, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes = None if mesh.empty else nn.logical_to_mesh_axes(("batch",))[0]
    names = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    shards = math.prod(mesh.shape[a] for a in names) if names else 1
    if shards == 1 or logits_bv.shape[0] % shards:
        return fn(logits_bv)
    spec = jax.sharding.PartitionSpec(batch_axes, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(logits_bv)


def _choose(logits_bv, key_b, step_b, sampling: SamplingConfig):
    """The next token [B] and its unfiltered log-probability [B]; row b draws token i with
    fold_in(key_b[b], i), so a row's sample never depends on the other rows."""
    logits_bv = logits_bv.astype(jnp.float32)
    if sampling.temperature == 0:
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    else:
        filtered_bv = _filter_per_shard(logits_bv, sampling)
        draw = lambda key, step, row_v: jax.random.categorical(jax.random.fold_in(key, step), row_v)  # noqa: E731
        token_b = jax.vmap(draw)(key_b, step_b, filtered_bv).astype(jnp.int32)
    logp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    return token_b, jnp.take_along_axis(logp_bv, token_b[:, None], axis=-1)[:, 0]


class Rows(NamedTuple):
    """Per-row decoding progress, [B, ...] each: what `generate` and the continuous-batching
    engine (`polar_jax.engine`) carry between decode steps, so both apply one set of rules."""

    logits_bv: jax.Array  # float32: logits of the row's next token
    position_b: jax.Array  # that token's position id
    step_b: jax.Array  # tokens chosen so far (the next token's column in tokens_bn)
    limit_b: jax.Array  # tokens the row may make (<= max_new_tokens)
    key_b: jax.Array  # the row's own key
    done_b: jax.Array
    tokens_bn: jax.Array
    logprobs_bn: jax.Array
    lengths_b: jax.Array
    truncated_b: jax.Array
    runs_bm: jax.Array  # per period n = m + 1: consecutive steps with token[t] == token[t - n]


def start_rows(logits_bv, position_b, key_b, limit_b, sampling: SamplingConfig) -> Rows:
    """Rows about to choose their first token (from the prompt's last logits)."""
    batch, n_new = logits_bv.shape[0], sampling.max_new_tokens
    return Rows(
        logits_bv=logits_bv.astype(jnp.float32),
        position_b=jnp.asarray(position_b, jnp.int32),
        step_b=jnp.zeros(batch, jnp.int32),
        limit_b=jnp.minimum(jnp.asarray(limit_b, jnp.int32), n_new),
        key_b=key_b,
        done_b=jnp.zeros(batch, bool),
        tokens_bn=jnp.zeros((batch, n_new), jnp.int32),
        logprobs_bn=jnp.zeros((batch, n_new), jnp.float32),
        lengths_b=jnp.zeros(batch, jnp.int32),
        truncated_b=jnp.zeros(batch, bool),
        runs_bm=jnp.zeros((batch, max(sampling.loop_max_ngram, 1)), jnp.int32),
    )


def _loop_step(step_b, runs_bm, tokens_bn, token_b, periods_m, repeats: int):
    """The repetition-loop rule after each row chose its token `step_b`: (runs [B, M], whether
    the row now ends in a loop [B], the length it is cut to [B]). A row loops when the last
    (repeats - 1) x n tokens each equal the token n before, for a period n in `periods_m`
    (the smallest such n is cut). Only the length is cut here; the repeated tokens are zeroed
    once, by `finish`."""
    back_bm = step_b[:, None] - periods_m[None]
    earlier_bm = jnp.take_along_axis(tokens_bn, jnp.maximum(back_bm, 0), axis=1)
    same_bm = (back_bm >= 0) & (earlier_bm == token_b[:, None])
    runs_bm = jnp.where(same_bm, runs_bm + 1, 0)
    hit_bm = runs_bm >= (repeats - 1) * periods_m[None]
    period_b = periods_m[jnp.argmax(hit_bm, axis=1)]  # the smallest matching n
    return runs_bm, hit_bm.any(1), step_b + 1 - (repeats - 1) * period_b


def advance(rows: Rows, sampling: SamplingConfig) -> tuple[Rows, jax.Array, jax.Array]:
    """Each live row chooses its next token and records it (stop, loop and length rules).

    Returns (rows, token_b, live_b): the caller runs the model on `token_b` at the old
    `rows.position_b` and stores the new logits and position. Finished rows write nothing.
    """
    live_b = ~rows.done_b
    token_b, logp_b = _choose(rows.logits_bv, rows.key_b, rows.step_b, sampling)
    row_b = jnp.arange(live_b.shape[0])
    col_b = jnp.where(live_b, rows.step_b, sampling.max_new_tokens)  # out of range: dropped
    tokens_bn = rows.tokens_bn.at[row_b, col_b].set(token_b, mode="drop")
    logprobs_bn = rows.logprobs_bn.at[row_b, col_b].set(logp_b, mode="drop")
    lengths_b = rows.lengths_b + live_b
    stop_ids = jnp.asarray(sampling.stop_ids or (-1,), jnp.int32)
    done_b = rows.done_b | (live_b & jnp.isin(token_b, stop_ids))
    runs_bm, truncated_b = rows.runs_bm, rows.truncated_b
    if sampling.loop_max_ngram:
        periods_m = jnp.arange(1, sampling.loop_max_ngram + 1, dtype=jnp.int32)
        runs_bm, loop_b, cut_b = _loop_step(rows.step_b, runs_bm, tokens_bn, token_b, periods_m, sampling.loop_repeats)
        loop_b &= live_b & ~done_b
        lengths_b = jnp.where(loop_b, cut_b, lengths_b)
        truncated_b = truncated_b | loop_b
        done_b = done_b | loop_b
    done_b = done_b | (live_b & (rows.step_b + 1 >= rows.limit_b))
    rows = rows._replace(
        step_b=rows.step_b + live_b,
        done_b=done_b,
        tokens_bn=tokens_bn,
        logprobs_bn=logprobs_bn,
        lengths_b=lengths_b,
        truncated_b=truncated_b,
        runs_bm=runs_bm,
    )
    return rows, token_b, live_b


def finish(rows: Rows) -> Generation:
    """The outputs of rows: tokens and log-probs past each row's length (a loop's repeats) zeroed."""
    kept_bn = jnp.arange(rows.tokens_bn.shape[1])[None] < rows.lengths_b[:, None]
    return Generation(
        jnp.where(kept_bn, rows.tokens_bn, 0),
        jnp.where(kept_bn, rows.logprobs_bn, 0.0),
        rows.lengths_b,
        rows.truncated_b,
    )


def prefill(cfg: ModelConfig, params, prompt_bt, prompt_lengths_b, cache_len: int):
    """Run right-padded prompts into a fresh KV cache of `cache_len` slots (index = prompt width):
    (the logits of each row's next token [B, V], the cache)."""
    prompt_len = prompt_bt.shape[1]
    mask_bt = jnp.arange(prompt_len)[None] < prompt_lengths_b[:, None]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    cache = T.KVCache.empty(cfg, prompt_bt.shape[0], cache_len)
    out = T.forward(
        cfg,
        params,
        prompt_bt * mask_bt,
        positions_bt,
        segment_ids_bt,
        cache,
        logits_at_bn=(prompt_lengths_b - 1)[:, None],
    )
    return out.logits_btv[:, 0], out.cache


class _State(NamedTuple):
    step: jax.Array  # int32 scalar: decode steps run
    rows: Rows
    cache: T.KVCache


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"))
def generate(
    cfg: ModelConfig, params, prompt_bt, prompt_lengths_b, sampling: SamplingConfig, rng, max_new_b=None
) -> Generation:
    """Continue right-padded prompts (`prompt_lengths_b` real tokens each, >= 1).

    Prefill once into a KV cache of prompt_len + max_new_tokens slots, then decode one token
    per step in a `while_loop` that ends as soon as every row is done. Row b draws its token i
    with fold_in(key_b, i), key_b = `row_keys(rng, B)[b]` (pass B keys to choose them), so a
    row's output depends on its prompt and key only. `max_new_b` [B] (optional) lowers each
    row's token budget below max_new_tokens.
    """
    batch, prompt_len = prompt_bt.shape
    n_new = sampling.max_new_tokens
    prompt_lengths_b = jnp.asarray(prompt_lengths_b, jnp.int32)
    last_logits_bv, cache = prefill(cfg, params, prompt_bt, prompt_lengths_b, prompt_len + n_new)
    limit_b = jnp.full(batch, n_new, jnp.int32) if max_new_b is None else max_new_b
    rows = start_rows(last_logits_bv, prompt_lengths_b, row_keys(rng, batch), limit_b, sampling)

    def body(s: _State) -> _State:
        rows, token_b, _ = advance(s.rows, sampling)
        position_b = s.rows.position_b
        out = T.forward(cfg, params, token_b[:, None], position_b[:, None], jnp.ones_like(token_b)[:, None], s.cache)
        return _State(s.step + 1, rows._replace(logits_bv=out.logits_btv[:, 0], position_b=position_b + 1), out.cache)

    def cond(s: _State):
        return (s.step < n_new) & ~jnp.all(s.rows.done_b)

    final = jax.lax.while_loop(cond, body, _State(jnp.zeros((), jnp.int32), rows, cache))
    return finish(final.rows)


def find_repetition_loop(tokens_bn, lengths_b, max_ngram: int, repeats: int):
    """The repetition-loop rule on finished arrays (numpy): (new lengths [B], looped [B]).

    Scans each row's first `lengths_b` tokens left to right and stops at the first token
    where the row ends with a block of n <= max_ngram tokens repeated `repeats` times (the
    smallest such n); the new length keeps the block's first occurrence only.
    """
    tokens_bn, lengths_b = np.asarray(tokens_bn), np.asarray(lengths_b)
    new_lengths_b, looped_b = lengths_b.copy(), np.zeros(len(lengths_b), bool)
    for b, (row, length) in enumerate(zip(tokens_bn, lengths_b)):
        for t in range(int(length)):
            hits = [
                n
                for n in range(1, max_ngram + 1)
                if t + 1 >= repeats * n
                and np.array_equal(row[t + 1 - (repeats - 1) * n : t + 1], row[t + 1 - repeats * n : t + 1 - n])
            ]
            if hits:
                new_lengths_b[b], looped_b[b] = t + 1 - (repeats - 1) * hits[0], True
                break
    return new_lengths_b, looped_b
