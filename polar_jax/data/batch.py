"""The batch contract, declared once: the arrays of a packed POLAR batch (pure numpy, no JAX).

`packing.make_batch` lays batches out, `check_batch` checks one, the train step reads the
fields with `step=True` (`STEP_KEYS`), and `shapes` gives the step's abstract shapes for
ahead-of-time lowering. Shapes are spelt by the fields' suffix letters:

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
        "0 = padding; pair p of a row is segments 2p+1 (chosen) and 2p+2 (rejected), chosen laid out first",
    ),
    Field("positions_bt", "bt", np.dtype(np.int32), "restart at 0 per segment; 0 on padding"),
    Field(
        "reward_index_bp2",
        "bp2",
        np.dtype(np.int32),
        "index in the row of the last token (the reward token) of pair p's chosen / rejected sequence; 0 if no pair",
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


def check_batch(batch: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError naming the first violation of the batch contract (as `packing.make_batch` lays it out).

    Checks shapes and dtypes, segments numbered 1..2k contiguously with padding only at the end,
    positions restarting at 0, reward indices at each segment's last token, masks and padding.
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


def _check_row(batch: Mapping[str, np.ndarray], r: int) -> None:
    """`check_batch`'s checks of row `r`, whose shapes and dtypes are already checked."""
    seg_t, pos_t, mask_p = batch["segment_ids_bt"][r], batch["positions_bt"][r], batch["pair_mask_bp"][r]
    reward_p2 = batch["reward_index_bp2"][r]
    n_real = int(np.count_nonzero(seg_t))
    k = int(mask_p.sum())
    if not mask_p[:k].all():
        raise ValueError(f"row {r}: pair_mask_bp {mask_p.tolist()} is not a prefix of real pairs")
    if (seg_t[:n_real] == 0).any():
        raise ValueError(f"row {r}: padding (segment 0) before the last real token")
    idx_t = np.arange(n_real)
    is_start_t = np.ones(n_real, bool)
    is_start_t[1:] = seg_t[1:n_real] != seg_t[: max(n_real - 1, 0)]
    starts = idx_t[is_start_t]
    if seg_t[starts].tolist() != list(range(1, 2 * k + 1)):
        raise ValueError(
            f"row {r}: segments {seg_t[starts].tolist()} are not 1..{2 * k} in order for its {k} real pairs"
        )
    start_of_t = np.maximum.accumulate(np.where(is_start_t, idx_t, 0))
    if (pos_t[:n_real] != idx_t - start_of_t).any() or pos_t[n_real:].any():
        raise ValueError(f"row {r}: positions do not restart at 0 per segment (or are not 0 on padding)")
    ends = np.append(starts[1:] - 1, n_real - 1) if n_real else starts
    if (reward_p2[:k].reshape(-1) != ends).any() or reward_p2[k:].any():
        raise ValueError(
            f"row {r}: reward_index_bp2 {reward_p2[:k].tolist()} is not each "
            f"segment's last token {ends.tolist()} (or 0 for empty slots)"
        )
    if (batch["tokens_bt"][r, n_real:] != PAD_ID).any() or (batch["record_index_bp"][r, k:] != -1).any():
        raise ValueError(f"row {r}: padding tokens are not PAD_ID={PAD_ID} or empty slots' record_index not -1")
