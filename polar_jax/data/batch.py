"""The batch contract, declared once: the arrays of a packed POLAR batch (pure numpy, no JAX).

`packing.make_batch` lays batches out, `check_batch` checks one, the train step reads the
fields with `step=True` (`STEP_KEYS`), and `shapes` gives the step's abstract shapes for
ahead-of-time lowering.

Two layouts of a pair (chosen and rejected sequence, each ending with the reward token):
- unshared: the two sequences are segments 2p+1 and 2p+2 of their row, branch 0, positions
  from 0 each;
- shared prefix: the pair is segment p+1: the longest common prefix of its two sequences
  (`shared_prefix_length`, branch 0, positions 0..L-1), then the rest of the chosen sequence
  (branch 1) and of the rejected one (branch 2), both with positions from L. Attention lets a
  suffix see its prefix and itself, never its sibling (`models.attention`), so every token
  computes what it would in the unshared layout and the prefix is computed once.
Shapes are spelt by the fields' suffix letters:

    b  batch rows            t  tokens per row        p  pairs per row (P, static)
    a digit stands for itself (reward_index_bp2: one index for chosen, one for rejected)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class Field:
    """One array of a batch: its name, dims (suffix letters), dtype, meaning, and whether the train step reads it."""

    name: str
    dims: str
    dtype: np.dtype
    meaning: str
    step: bool = True


FIELDS = (
    Field("tokens_bt", "bt", np.dtype(np.int32), "token ids, PAD_ID on padding"),
    Field(
        "segment_ids_bt",
        "bt",
        np.dtype(np.int32),
        "0 = padding; pair p of a row is segments 2p+1 (chosen) and 2p+2 (rejected), chosen laid out first; "
        "shared layout: segment p+1",
    ),
    Field(
        "branch_ids_bt",
        "bt",
        np.dtype(np.int32),
        "0 = a whole sequence (unshared) or a pair's shared prefix; 1 / 2 = its chosen / rejected suffix (shared)",
    ),
    Field(
        "positions_bt",
        "bt",
        np.dtype(np.int32),
        "restart at 0 per segment (shared layout: each suffix continues from its prefix's end); 0 on padding",
    ),
    Field(
        "reward_index_bp2",
        "bp2",
        np.dtype(np.int32),
        "index in the row of the last token (the reward token) of pair p's chosen / rejected sequence (or suffix); "
        "0 if no pair",
    ),
    Field("pair_mask_bp", "bp", np.dtype(np.bool_), "which pairs are real"),
    Field(
        "record_index_bp",
        "bp",
        np.dtype(np.int32),
        "the pair's record index in its source; -1 if no pair (bookkeeping: the step does not read it)",
        step=False,
    ),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
ALL_KEYS = tuple(f.name for f in FIELDS)
STEP_KEYS = tuple(f.name for f in FIELDS if f.step)


def ndim(key: str) -> int:
    """The rank of field `key`."""
    return len(FIELDS_BY_NAME[key].dims)


def field_shape(key: str, batch_size: int, seq_len: int, pairs: int) -> tuple[int, ...]:
    """The shape of field `key` in a batch of `batch_size` rows of `seq_len` tokens and `pairs` pair slots."""
    sizes = {"b": batch_size, "t": seq_len, "p": pairs}
    return tuple(sizes[d] if d in sizes else int(d) for d in FIELDS_BY_NAME[key].dims)


def shapes(batch_size: int, seq_len: int, pairs: int, keys=STEP_KEYS) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the step's fields (or of `keys`): what ahead-of-time lowering needs."""
    return {k: (field_shape(k, batch_size, seq_len, pairs), FIELDS_BY_NAME[k].dtype) for k in keys}


def shared_prefix_length(chosen, rejected) -> int:
    """Tokens the shared layout computes once: the longest common prefix of the two id sequences,
    leaving each sequence at least its last token (the reward token) as its own suffix."""
    n = min(len(chosen) - 1, len(rejected) - 1)
    if n <= 0:
        return 0
    differ = np.flatnonzero(np.asarray(chosen[:n]) != np.asarray(rejected[:n]))
    return int(differ[0]) if differ.size else n


def pair_span(chosen_len: int, rejected_len: int, prefix_len: int, shared: bool) -> tuple[int, int]:
    """(tokens of a row the pair takes, tokens of its longest segment) in either layout."""
    if shared:
        total = chosen_len + rejected_len - prefix_len
        return total, total
    return chosen_len + rejected_len, max(chosen_len, rejected_len)


def check_batch(batch: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError naming the first violation of the batch contract (as `packing.make_batch` lays it out).

    Checks shapes and dtypes, then per row (in either layout) segments numbered 1.. contiguously
    with padding only at the end, branches and positions as the layout says, reward indices at each
    sequence's (or suffix's) last token, masks and padding.
    """
    missing = [k for k in ALL_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}")
    b, t = batch["tokens_bt"].shape
    p = batch["pair_mask_bp"].shape[1]
    for key, (shape, dtype) in shapes(b, t, p, ALL_KEYS).items():
        if batch[key].shape != shape or batch[key].dtype != dtype:
            raise ValueError(f"{key}: {batch[key].shape} {batch[key].dtype}, expected {shape} {np.dtype(dtype)}")
    for r in range(b):
        _check_row(batch, r)


def _runs(seg_t: np.ndarray, branch_t: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Maximal runs of one (segment, branch) in a row's real tokens: (segment, branch, start, end)."""
    n = len(seg_t)
    if not n:
        return []
    change = np.flatnonzero((seg_t[1:] != seg_t[:-1]) | (branch_t[1:] != branch_t[:-1])) + 1
    starts, ends = np.append(0, change), np.append(change, n)
    return [(int(seg_t[a]), int(branch_t[a]), int(a), int(z)) for a, z in zip(starts, ends)]


def _expected_runs(runs, k: int) -> tuple[list, list[int], list[int]]:
    """For a row's runs and its k pairs: the (segment, branch) sequence either layout allows, each
    run's first position, and the indices of the runs whose last token holds a reward."""
    shared = any(branch for _, branch, _, _ in runs)
    if not shared:
        return [(s, 0) for s in range(1, 2 * k + 1)], [0] * len(runs), list(range(2 * k))
    expected, first_pos, reward_runs, i = [], [], [], 0
    for s in range(1, k + 1):
        prefix = runs[i][3] - runs[i][2] if i < len(runs) and runs[i][:2] == (s, 0) else 0
        expected += [(s, 0)] if prefix else []
        first_pos += [0] if prefix else []
        i += 1 if prefix else 0
        reward_runs += [i, i + 1]
        expected += [(s, 1), (s, 2)]
        first_pos += [prefix, prefix]
        i += 2
    return expected, first_pos, reward_runs


def _check_row(batch: Mapping[str, np.ndarray], r: int) -> None:
    """`check_batch`'s checks of row `r`, whose shapes and dtypes are already checked."""
    seg_t, pos_t, mask_p = batch["segment_ids_bt"][r], batch["positions_bt"][r], batch["pair_mask_bp"][r]
    branch_t, reward_p2 = batch["branch_ids_bt"][r], batch["reward_index_bp2"][r]
    n_real = int(np.count_nonzero(seg_t))
    k = int(mask_p.sum())
    if not mask_p[:k].all():
        raise ValueError(f"row {r}: pair_mask_bp {mask_p.tolist()} is not a prefix of real pairs")
    if (seg_t[:n_real] == 0).any():
        raise ValueError(f"row {r}: padding (segment 0) before the last real token")
    runs = _runs(seg_t[:n_real], branch_t[:n_real])
    expected, first_pos, reward_runs = _expected_runs(runs, k)
    if [run[:2] for run in runs] != expected:
        raise ValueError(
            f"row {r}: (segment, branch) runs {[run[:2] for run in runs]} are not {expected}, "
            f"the unshared or shared-prefix layout of its {k} real pairs"
        )
    for (_, _, a, z), first in zip(runs, first_pos):
        if (pos_t[a:z] != first + np.arange(z - a)).any():
            raise ValueError(
                f"row {r}: positions {pos_t[a:z].tolist()} of tokens {a}..{z - 1} do not count from {first}"
            )
    if pos_t[n_real:].any() or branch_t[n_real:].any():
        raise ValueError(f"row {r}: positions or branch ids are not 0 on padding")
    ends = [runs[i][3] - 1 for i in reward_runs]
    if reward_p2[:k].reshape(-1).tolist() != ends or reward_p2[k:].any():
        raise ValueError(
            f"row {r}: reward_index_bp2 {reward_p2[:k].tolist()} is not each "
            f"sequence's last token {ends} (or 0 for empty slots)"
        )
    if (batch["tokens_bt"][r, n_real:] != PAD_ID).any() or (batch["record_index_bp"][r, k:] != -1).any():
        raise ValueError(f"row {r}: padding tokens are not PAD_ID={PAD_ID} or empty slots' record_index not -1")
