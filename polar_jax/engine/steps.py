"""The engine's pure, compiled steps over a fixed-size decode state (JetStream's shape).

    slots = empty_slots(cfg, sampling, num_slots=8, cache_len=1024 + 4096)
    slots = prefill_insert(cfg, sampling, params, slots, prompt_bt, lengths_b, slot_b, key_b, limit_b)
    slots = decode(cfg, sampling, params, slots, min_live, max_steps)
    slots, gen, ready_s = harvest(slots)
    slots = compact(slots, keep_s)            # the drain: fewer slots

`Slots` has fixed shapes (S slots x C cache positions, S x N outputs), so nothing recompiles
while the engine runs: `decode` compiles once per (model, sampling settings, S),
`prefill_insert` once per (prompt width, batch) bucket; only the drain, when no request waits,
shrinks S (`compact`) to a few smaller sizes. A slot is free, decoding, or finished-but-unread
("ready"); each slot's rows are `sampling.Rows`, the same per-row state and rules
(`sampling.advance`) as `sampling.generate`, and each row draws token i with fold_in(its own
key, i): what a slot outputs never depends on the slot, on the other slots or on the step at
which its request entered.

The KV cache writes each slot at its own index (`KVCache.index` [S]): a request's prompt fills
positions 0..P-1 of its slot and its tokens follow. Under `parallel.use_rules(mesh)` every
array of the state is constrained to its logical axes (`SLOT_AXES`: slots over data / fsdp,
kv heads over tensor), the layout `sampling.generate` has on the same mesh.

Letters as in `models/transformer.py`, plus S slots (a batch whose rows come and go).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from polar_jax import sampling as sampling_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.sampling import Rows, SamplingConfig

B, C, L, K, E = T.BATCH, T.CACHE_SEQ, T.LAYERS, T.KV_HEADS, T.HEAD_DIM


class Slots(NamedTuple):
    """The decode state of S slots."""

    rows: Rows  # [S, ...]: the requests' progress (finished and free slots have done_s True)
    cache: T.KVCache  # [L, S, C, K, E] keys / values, index [S]
    held_s: jax.Array  # bool: the slot holds a request (decoding, or finished and not yet harvested)
    steps: jax.Array  # int32 scalar: decode steps run (slot-steps = S x steps)


# Logical axes of every array of `Slots` (keys are left to the compiler: typed key arrays).
SLOT_AXES = Slots(
    rows=Rows(
        logits_bv=(B, T.VOCAB),
        position_b=(B,),
        step_b=(B,),
        limit_b=(B,),
        key_b=None,
        done_b=(B,),
        tokens_bn=(B, None),
        logprobs_bn=(B, None),
        lengths_b=(B,),
        truncated_b=(B,),
        runs_bm=(B, None),
    ),
    cache=T.KVCache(
        k_lbske=(L, B, C, K, E), v_lbske=(L, B, C, K, E), segment_ids_bs=(B, C), positions_bs=(B, C), index=(B,)
    ),
    held_s=(B,),
    steps=(),
)


def is_axes(x) -> bool:
    """A leaf of `SLOT_AXES`: a tuple of logical axis names (or None)."""
    return x is None or (isinstance(x, tuple) and all(isinstance(a, str | None) for a in x))


def _constrain(slots: Slots) -> Slots:
    """Every array of the state on its logical axes (a no-op without a mesh and rules)."""
    leaves, treedef = jax.tree.flatten(slots)
    axes = jax.tree.flatten(SLOT_AXES, is_leaf=is_axes)[0]
    out = [x if a is None else nn.with_logical_constraint(x, a) for x, a in zip(leaves, axes)]
    return jax.tree.unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "num_slots", "cache_len"))
def empty_slots(cfg: ModelConfig, sampling: SamplingConfig, num_slots: int, cache_len: int) -> Slots:
    """S free slots of `cache_len` cache positions each (all rows done, none held)."""
    keys_s = jax.random.split(jax.random.key(0), num_slots)  # replaced as requests enter
    rows = sampling_lib.start_rows(
        jnp.zeros((num_slots, cfg.vocab_size), jnp.float32),
        jnp.zeros(num_slots, jnp.int32),
        keys_s,
        jnp.zeros(num_slots, jnp.int32),
        sampling,
    )
    cache = T.KVCache.empty(cfg, num_slots, cache_len)
    cache = cache._replace(index=jnp.zeros(num_slots, jnp.int32))
    rows = rows._replace(done_b=jnp.ones(num_slots, bool))
    return _constrain(Slots(rows, cache, jnp.zeros(num_slots, bool), jnp.zeros((), jnp.int32)))


def _scatter(state_s, new_b, slot_b):
    """Rows `new_b` into `state_s` at slots `slot_b` (slot S or more: a padding row, dropped)."""
    return state_s.at[slot_b].set(new_b, mode="drop")


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnames=("slots",))
def prefill_insert(
    cfg: ModelConfig, sampling: SamplingConfig, params, slots: Slots, prompt_bt, lengths_b, slot_b, key_b, limit_b
) -> Slots:
    """Prefill B right-padded prompts and put them into slots `slot_b` [B] (>= S: padding rows),
    drawing with keys `key_b` [B] (typed, or their key data).

    Each prompt's keys / values fill positions 0..P-1 of its slot's cache (the rest of the
    slot cleared); its tokens are written from its own length on.
    """
    slots = _constrain(slots)
    cache_len = slots.cache.segment_ids_bs.shape[1]
    width = prompt_bt.shape[1]
    logits_bv, cache = sampling_lib.prefill(cfg, params, prompt_bt, lengths_b, width)
    key_b = jax.random.wrap_key_data(key_b) if not jnp.issubdtype(key_b.dtype, jax.dtypes.prng_key) else key_b
    new = sampling_lib.start_rows(logits_bv, lengths_b, key_b, limit_b, sampling)
    rows = jax.tree.map(lambda s, n: _scatter(s, n, slot_b), slots.rows, new)
    pad = cache_len - width

    def rows_of(x_bs, axis):  # [.., B, width, ..] -> [.., B, C, ..], zeros after the prompt
        widths = [(0, 0)] * x_bs.ndim
        widths[axis] = (0, pad)
        return jnp.pad(x_bs, widths)

    k = slots.cache.k_lbske.at[:, slot_b].set(rows_of(cache.k_lbske, 2), mode="drop")
    v = slots.cache.v_lbske.at[:, slot_b].set(rows_of(cache.v_lbske, 2), mode="drop")
    new_cache = T.KVCache(
        k,
        v,
        _scatter(slots.cache.segment_ids_bs, rows_of(cache.segment_ids_bs, 1), slot_b),
        _scatter(slots.cache.positions_bs, rows_of(cache.positions_bs, 1), slot_b),
        _scatter(slots.cache.index, lengths_b, slot_b),
    )
    held_s = _scatter(slots.held_s, jnp.ones_like(slot_b, bool), slot_b)
    return _constrain(Slots(rows, new_cache, held_s, slots.steps))


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnames=("slots",))
def decode(cfg: ModelConfig, sampling: SamplingConfig, params, slots: Slots, min_live, max_steps) -> Slots:
    """Decode all slots one token per step until at most `min_live` (traced) slots are still
    decoding or `max_steps` steps ran. The host passes held - 1 while requests wait (stop at the
    first finished row, to refill its slot), and in the drain the count below which it shrinks
    the state (`compact`), or 0.

    Every step runs the model on all S slots: finished and free slots compute too (the waste
    that refilling and `compact` keep small); their cache index does not move, their writes
    are masked.
    """

    def cond(carry):
        s, i = carry
        live = jnp.sum(~s.rows.done_b)
        return (live > jnp.maximum(min_live, 0)) & (i < max_steps)

    def body(carry):
        s, i = carry
        rows, token_b, live_b = sampling_lib.advance(s.rows, sampling)
        position_b = s.rows.position_b
        segment_b = live_b.astype(jnp.int32)  # a masked write for slots that are not decoding
        out = T.forward(cfg, params, token_b[:, None], position_b[:, None], segment_b[:, None], s.cache)
        cache = out.cache._replace(index=s.cache.index + live_b)
        rows = rows._replace(
            logits_bv=out.logits_btv[:, 0].astype(jnp.float32),
            position_b=position_b + live_b,
        )
        return _constrain(Slots(rows, cache, s.held_s, s.steps + 1)), i + 1

    slots, _ = jax.lax.while_loop(cond, body, (_constrain(slots), jnp.zeros((), jnp.int32)))
    return slots


@jax.jit
def compact(slots: Slots, keep_s) -> Slots:
    """Slots `keep_s` [S'] of the state, in that order: a smaller state for the drain (no request
    waits and few slots still decode), so the last rows stop paying for S slots per step."""
    c = slots.cache
    cache = T.KVCache(
        c.k_lbske[:, keep_s], c.v_lbske[:, keep_s], c.segment_ids_bs[keep_s], c.positions_bs[keep_s], c.index[keep_s]
    )
    rows = jax.tree.map(lambda x: x[keep_s], slots.rows)
    return _constrain(Slots(rows, cache, slots.held_s[keep_s], slots.steps))


@functools.partial(jax.jit, donate_argnames=("slots",))
def harvest(slots: Slots) -> tuple[Slots, sampling_lib.Generation, jax.Array]:
    """(slots with the finished ones freed, every slot's outputs [S, ...], which slots finished [S]).

    Read the outputs of the slots flagged ready; the others' rows are meaningless."""
    ready_s = slots.held_s & slots.rows.done_b
    return _constrain(slots._replace(held_s=slots.held_s & ~ready_s)), sampling_lib.finish(slots.rows), ready_s
