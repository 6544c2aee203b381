"""Scoring with a POLAR reward model: rows {prompt, reference, output} -> one reward each.

This is the inference path users run with released checkpoints: the official encoding
(`data.encoding`), the model's reward head read at the reward token (the last token), rows
batched by length so that each compiled shape is reused. By default the candidates of one prompt
and reference share a row segment and their common prefix is computed once (`data.groups`), which
gives the same rewards as laying each sequence out whole (`shared_prefix=False`).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from polar_jax import parallel
from polar_jax.data import encoding, groups
from polar_jax.io.model import Model
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

log = logging.getLogger(__name__)


def reward_token_id_for(model: Model, tokenizer, enc_cfg: encoding.EncodingConfig) -> int:
    """The model config's `reward_token_id` (official checkpoints carry it), else the tokenizer's."""
    from_config = model.hf_config.get("reward_token_id")
    from_tokenizer = None
    if encoding.is_single_token(tokenizer, enc_cfg.reward_token):
        from_tokenizer = tokenizer.convert_tokens_to_ids(enc_cfg.reward_token)
    if from_config is not None:
        if from_tokenizer is not None and from_tokenizer != from_config:
            log.warning(
                "config reward_token_id %d differs from the tokenizer's %r = %d; using the config's",
                from_config,
                enc_cfg.reward_token,
                from_tokenizer,
            )
        return int(from_config)
    return encoding.resolve_reward_token_id(tokenizer, enc_cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def last_token_rewards(cfg: ModelConfig, params, tokens_bt, lengths_b):
    """Rewards [B] read at each row's last real token (`lengths_b`) of right-padded `tokens_bt`."""
    mask_bt = jnp.arange(tokens_bt.shape[1])[None] < lengths_b[:, None]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    reward_bt = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt).reward_bt
    return T.gather_rows(reward_bt, (lengths_b - 1)[:, None])[:, 0]


# Candidates per group (the rollouts of a prompt, a triplet's two candidates) and slots per row.
MAX_GROUP = 16
MAX_CANDIDATES_PER_ROW = 32
# Fewer shared ids than this are not worth grouping (the group's prefix is computed once).
MIN_SHARED_TOKENS = 16


def reward_scores(
    cfg: ModelConfig,
    params,
    sequences: list[np.ndarray],
    batch_size: int = 8,
    pad_multiple: int = 128,
    progress: bool = True,
    shared_prefix: bool = True,
    across_processes: bool = False,
) -> np.ndarray:
    """Reward at the last token of each id sequence; float32 [N], in input order.

    `shared_prefix=False` (the reference): sequences are sorted by length, one a row, padded to a
    multiple of `pad_multiple`, so a run compiles one program per length bucket.
    `shared_prefix=True`: sequences sharing a long id prefix (`groups.group_by_prefix`: the
    candidates of one prompt and reference) are scored as one group, their prefix computed once,
    and identical sequences once (`_shared_prefix_scores`); the same rewards, fewer tokens.

    `across_processes` (a multi-process run: every process calls this with the same sequences):
    the batches are planned from all sequences as one process plans them, batch k is run by process
    k % jax.process_count() on its own first device (a process-local computation: no global mesh),
    and the rewards are gathered (`parallel.gather_owned`), so every process returns all of them,
    bit for bit the rewards one process computes. Only the forward passes are split.
    """
    if "reward" not in cfg.heads:
        raise ValueError(f"this model has heads {cfg.heads}; scoring needs a reward model")
    too_big = [i for i, s in enumerate(sequences) if len(s) and int(np.max(s)) >= cfg.vocab_size]
    if too_big:
        raise ValueError(
            f"sequence {too_big[0]} has token id {int(np.max(sequences[too_big[0]]))} >= the model's vocab size "
            f"{cfg.vocab_size}: the tokenizer has tokens the model lacks (grow the embedding, polar_jax.models.vocab)"
        )
    share = _share(across_processes)
    progress = progress and share[0] == 0  # one bar: process 0's share
    if shared_prefix:
        return _shared_prefix_scores(cfg, params, sequences, batch_size, progress, share)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    scores = np.zeros(len(sequences), np.float32)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    owner_n = np.zeros(len(sequences), np.int64)
    for k, index in enumerate(batches):
        owner_n[index] = k % share[1]
    mine = batches[share[0] :: share[1]]
    bar = tqdm(total=sum(len(b) for b in mine), desc=_bar_name(share), unit="row", disable=not progress)
    for index in mine:
        lengths = np.array([len(sequences[i]) for i in index], np.int32)
        width = -(-lengths.max() // pad_multiple) * pad_multiple
        tokens = np.zeros((batch_size, width), np.int32)  # a full batch always: one shape per width
        for row, i in enumerate(index):
            tokens[row, : lengths[row]] = sequences[i]
        lengths = np.pad(lengths, (0, batch_size - len(index)), constant_values=1)
        scores[index] = np.asarray(last_token_rewards(cfg, params, tokens, lengths))[: len(index)]
        bar.update(len(index))
    bar.close()
    return parallel.gather_owned(scores, owner_n) if share[1] > 1 else scores


def _share(across_processes: bool) -> tuple[int, int]:
    """(this process's index, how many share the batches): (0, 1) unless `across_processes`."""
    return (jax.process_index(), jax.process_count()) if across_processes else (0, 1)


def _bar_name(share: tuple[int, int]) -> str:
    return "score" if share[1] == 1 else f"score (process {share[0]} of {share[1]})"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.partial(jax.jit, static_argnames="cfg")
def _prefix_cached_rewards(
    cfg: ModelConfig, params, prefix_tokens_gp, prefix_len_g, suffix_tokens_rs, suffix_len_r, group_r
):
    """Rewards [R] of candidates scored against their group's prefix, computed once into a KV cache.

    The G prefixes (right-padded to P) run first, filling a cache of P + S slots per group; each of
    the R suffixes (right-padded to S) then runs against a copy of its group's cache (`group_r`), its
    positions continuing from its prefix's end: it sees its prefix and itself, as a whole sequence
    would, and attention costs R x S x (P + S) instead of R x (P + S)^2.
    """
    g, p = prefix_tokens_gp.shape
    r, s = suffix_tokens_rs.shape
    prefix_mask_gp = jnp.arange(p)[None] < prefix_len_g[:, None]
    positions_gp, segment_ids_gp = T.padded_inputs(prefix_mask_gp)
    cache = T.forward(
        cfg, params, prefix_tokens_gp, positions_gp, segment_ids_gp, cache=T.KVCache.empty(cfg, g, p + s)
    ).cache
    cache_r = T.KVCache(
        cache.k_lbske[:, group_r],
        cache.v_lbske[:, group_r],
        cache.segment_ids_bs[group_r],
        cache.positions_bs[group_r],
        cache.index,
    )
    suffix_mask_rs = (jnp.arange(s)[None] < suffix_len_r[:, None]).astype(jnp.int32)
    positions_rs = (prefix_len_g[group_r][:, None] + jnp.arange(s)[None]) * suffix_mask_rs
    reward_rs = T.forward(cfg, params, suffix_tokens_rs, positions_rs, suffix_mask_rs, cache=cache_r).reward_bt
    return T.gather_rows(reward_rs, (suffix_len_r - 1)[:, None])[:, 0]


def _pow2_at_least(n: int, smallest: int = 16) -> int:
    return max(smallest, 1 << (max(n, 1) - 1).bit_length())


def _width(n: int) -> int:
    """A padded width for `n` tokens: a power of two up to 128 (>= 16), then a multiple of 128."""
    return _pow2_at_least(n) if n <= 128 else _round_up(n, 128)


def _shared_prefix_scores(
    cfg: ModelConfig, params, sequences, batch_size: int, progress: bool, share: tuple[int, int] = (0, 1)
):
    """`reward_scores` with shared-prefix groups (`groups.group_by_prefix`, at most `MAX_GROUP`
    candidates each; identical sequences scored once, so a tie stays a tie bit for bit): `batch_size`
    groups a call, similar prefix lengths together, through `_prefix_cached_rewards`. Shapes: prefixes
    and suffixes padded by `_width`, suffix rows to a power of two: few compiled programs. `share`
    (index, count): run call k only where k % count == index, then gather (`reward_scores`)."""
    empty = [i for i, s in enumerate(sequences) if len(s) == 0]
    if empty:
        raise ValueError(f"sequence {empty[0]} is empty; every scored sequence ends with the reward token")
    unique_index: dict[bytes, int] = {}
    arrays = [np.asarray(s, np.int32) for s in sequences]
    inverse_n = np.array([unique_index.setdefault(a.tobytes(), len(unique_index)) for a in arrays], np.int64)
    arrays = [arrays[i] for i in np.unique(inverse_n, return_index=True)[1]]
    scores = np.zeros(len(arrays), np.float32)
    if not arrays:
        return scores
    members = groups.group_by_prefix(arrays, MAX_GROUP, MIN_SHARED_TOKENS)
    prefix_len = [groups.common_prefix_length([arrays[i] for i in m]) for m in members]
    order = sorted(range(len(members)), key=lambda g: prefix_len[g])  # similar prefix widths per call
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    owner_u = np.zeros(len(arrays), np.int64)
    for k, chunk in enumerate(chunks):
        owner_u[[i for g in chunk for i in members[g]]] = k % share[1]
    total = int((owner_u[inverse_n] == share[0]).sum())
    bar = tqdm(total=total, desc=_bar_name(share), unit="row", disable=not progress)
    for chunk in chunks[share[0] :: share[1]]:
        width = _width(max(prefix_len[g] for g in chunk))
        prefix_gp = np.zeros((batch_size, width), np.int32)
        rows = [(slot, i) for slot, g in enumerate(chunk) for i in members[g]]
        suffix_width = _width(max(len(arrays[i]) - prefix_len[chunk[slot]] for slot, i in rows))
        suffix_rs = np.zeros((_pow2_at_least(len(rows), 1), suffix_width), np.int32)
        suffix_len_r = np.ones(len(suffix_rs), np.int32)
        group_r = np.zeros(len(suffix_rs), np.int32)
        for slot, g in enumerate(chunk):
            prefix_gp[slot, : prefix_len[g]] = arrays[members[g][0]][: prefix_len[g]]
        for row, (slot, i) in enumerate(rows):
            suffix = arrays[i][prefix_len[chunk[slot]] :]
            suffix_rs[row, : len(suffix)], suffix_len_r[row], group_r[row] = suffix, len(suffix), slot
        prefix_len_g = np.zeros(batch_size, np.int32)
        prefix_len_g[: len(chunk)] = [prefix_len[g] for g in chunk]
        rewards_r = _prefix_cached_rewards(cfg, params, prefix_gp, prefix_len_g, suffix_rs, suffix_len_r, group_r)
        index_r = np.array([i for _, i in rows])
        scores[index_r] = np.asarray(rewards_r)[: len(rows)]
        bar.update(int(np.isin(inverse_n, index_r).sum()))
    bar.close()
    if share[1] > 1:
        scores = parallel.gather_owned(scores, owner_u)
    return scores[inverse_n]


def score_rows(
    model: Model,
    tokenizer,
    rows: list[dict],
    enc_cfg: encoding.EncodingConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    shared_prefix: bool = True,
    across_processes: bool = False,
) -> np.ndarray:
    """Rewards of `{prompt, reference, output[, wrapper]}` rows under the official encoding
    (a row's `wrapper` overrides `enc_cfg.wrapper`, as in the official client); `shared_prefix`:
    rows of one prompt and reference compute their common prefix once; `across_processes`: the
    processes of a multi-process run share the batches, each gets every reward (`reward_scores`)."""
    enc_cfg = enc_cfg or encoding.EncodingConfig()
    reward_id = reward_token_id_for(model, tokenizer, enc_cfg)
    sequences = [
        encoding.encode(tokenizer, r["prompt"], r["reference"], r["output"], enc_cfg, reward_id, r.get("wrapper")).ids
        for r in rows
    ]
    return reward_scores(
        model.cfg,
        model.params,
        sequences,
        batch_size=batch_size,
        progress=progress,
        shared_prefix=shared_prefix,
        across_processes=across_processes,
    )
