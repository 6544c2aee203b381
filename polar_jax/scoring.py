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
def _last_token_rewards(cfg: ModelConfig, params, tokens_bt, lengths_b):
    mask_bt = jnp.arange(tokens_bt.shape[1])[None] < lengths_b[:, None]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    reward_bt = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt).reward_bt
    return T.gather_rows(reward_bt, (lengths_b - 1)[:, None])[:, 0]


# Candidates per group (the rollouts of a prompt, a triplet's two candidates) and slots per row.
MAX_GROUP = 16
MAX_CANDIDATES_PER_ROW = 32
# Fewer shared ids than this are not worth a longer segment (attention grows with it).
MIN_SHARED_TOKENS = 16


def reward_scores(
    cfg: ModelConfig,
    params,
    sequences: list[np.ndarray],
    batch_size: int = 8,
    pad_multiple: int = 128,
    progress: bool = True,
    shared_prefix: bool = True,
) -> np.ndarray:
    """Reward at the last token of each id sequence; float32 [N], in input order.

    `shared_prefix=False` (the reference): sequences are sorted by length, one a row, padded to a
    multiple of `pad_multiple`, so a run compiles one program per length bucket.
    `shared_prefix=True`: sequences sharing a long id prefix (`groups.group_by_prefix`: the
    candidates of one prompt and reference) are scored as one group, their prefix computed once,
    and identical sequences once (`_shared_prefix_scores`); the same rewards, fewer tokens.
    """
    if "reward" not in cfg.heads:
        raise ValueError(f"this model has heads {cfg.heads}; scoring needs a reward model")
    too_big = [i for i, s in enumerate(sequences) if len(s) and int(np.max(s)) >= cfg.vocab_size]
    if too_big:
        raise ValueError(
            f"sequence {too_big[0]} has token id {int(np.max(sequences[too_big[0]]))} >= the model's vocab size "
            f"{cfg.vocab_size}: the tokenizer has tokens the model lacks (grow the embedding, polar_jax.models.vocab)"
        )
    if shared_prefix:
        return _shared_prefix_scores(cfg, params, sequences, batch_size, pad_multiple, progress)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    scores = np.zeros(len(sequences), np.float32)
    bar = tqdm(total=len(sequences), desc="score", unit="row", disable=not progress)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        lengths = np.array([len(sequences[i]) for i in index], np.int32)
        width = -(-lengths.max() // pad_multiple) * pad_multiple
        tokens = np.zeros((batch_size, width), np.int32)  # a full batch always: one shape per width
        for row, i in enumerate(index):
            tokens[row, : lengths[row]] = sequences[i]
        lengths = np.pad(lengths, (0, batch_size - len(index)), constant_values=1)
        scores[index] = np.asarray(_last_token_rewards(cfg, params, tokens, lengths))[: len(index)]
        bar.update(len(index))
    bar.close()
    return scores


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("cfg", "window"))
def _group_rewards(cfg: ModelConfig, params, tokens_bt, positions_bt, segment_ids_bt, branch_ids_bt, index_bn, window):
    """Rewards [B, N] at `index_bn` of rows in the shared-prefix layout, attention within `window`."""
    reward_bt = T.forward(
        cfg, params, tokens_bt, positions_bt, segment_ids_bt, branch_ids_bt=branch_ids_bt, attention_window=window
    ).reward_bt
    return T.gather_rows(reward_bt, index_bn)


def _shared_prefix_scores(cfg: ModelConfig, params, sequences, batch_size: int, pad_multiple: int, progress: bool):
    """`reward_scores` with shared-prefix groups: group (`groups.group_by_prefix`, at most `MAX_GROUP`
    candidates and twice the widest unshared row each), pack whole groups first-fit into rows of one
    width (a multiple of `pad_multiple`), longest groups first, and score `batch_size` rows a call (a
    last, short batch: the next power of two of its rows) with
    `MAX_CANDIDATES_PER_ROW` slots and the attention window of the batch's longest group (rounded up
    to a multiple of 128; 0, the whole row, when it covers the row): few compiled shapes."""
    empty = [i for i, s in enumerate(sequences) if len(s) == 0]
    if empty:
        raise ValueError(f"sequence {empty[0]} is empty; every scored sequence ends with the reward token")
    # Identical sequences are scored once: the same score, bit for bit (an evaluated tie stays a tie).
    unique_index: dict[bytes, int] = {}
    arrays = [np.asarray(s, np.int32) for s in sequences]
    inverse_n = np.array([unique_index.setdefault(a.tobytes(), len(unique_index)) for a in arrays], np.int64)
    arrays = [arrays[i] for i in np.unique(inverse_n, return_index=True)[1]]
    scores = np.zeros(len(arrays), np.float32)
    if not arrays:
        return scores
    max_span = 2 * _round_up(max(len(s) for s in arrays), pad_multiple)
    members = groups.group_by_prefix(arrays, MAX_GROUP, MIN_SHARED_TOKENS, max_span)
    seqs = [[arrays[i] for i in m] for m in members]
    spans = [groups.group_span([len(s) for s in g], groups.common_prefix_length(g)) for g in seqs]
    by_span = sorted(range(len(members)), key=lambda g: -spans[g])  # longest first: similar windows per batch
    members, seqs, spans = [members[g] for g in by_span], [seqs[g] for g in by_span], [spans[g] for g in by_span]
    row_len = _round_up(max(spans), pad_multiple)
    rows = groups.plan_rows(spans, [len(m) for m in members], row_len, MAX_CANDIDATES_PER_ROW)
    bar = tqdm(total=len(sequences), desc="score", unit="row", disable=not progress)
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        # A last, short batch gets the next power of two of its rows (few shapes, little padding).
        rows_in_call = min(batch_size, 1 << (len(batch_rows) - 1).bit_length())
        laid = groups.layout_rows(seqs, members, batch_rows, row_len, MAX_CANDIDATES_PER_ROW, rows_in_call)
        window = _round_up(laid.longest_segment, 128)
        rewards_bn = _group_rewards(
            cfg,
            params,
            laid.tokens_bt,
            laid.positions_bt,
            laid.segment_ids_bt,
            laid.branch_ids_bt,
            laid.reward_index_bn,
            window if window < row_len else 0,
        )
        mask_bn = laid.candidate_mask_bn
        scores[laid.candidate_bn[mask_bn]] = np.asarray(rewards_bn)[mask_bn]
        bar.update(int(np.isin(inverse_n, laid.candidate_bn[mask_bn]).sum()))
    bar.close()
    return scores[inverse_n]


def score_rows(
    model: Model,
    tokenizer,
    rows: list[dict],
    enc_cfg: encoding.EncodingConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    shared_prefix: bool = True,
) -> np.ndarray:
    """Rewards of `{prompt, reference, output[, wrapper]}` rows under the official encoding
    (a row's `wrapper` overrides `enc_cfg.wrapper`, as in the official client); `shared_prefix`:
    rows of one prompt and reference compute their common prefix once (`reward_scores`)."""
    enc_cfg = enc_cfg or encoding.EncodingConfig()
    reward_id = reward_token_id_for(model, tokenizer, enc_cfg)
    sequences = [
        encoding.encode(tokenizer, r["prompt"], r["reference"], r["output"], enc_cfg, reward_id, r.get("wrapper")).ids
        for r in rows
    ]
    return reward_scores(
        model.cfg, model.params, sequences, batch_size=batch_size, progress=progress, shared_prefix=shared_prefix
    )
