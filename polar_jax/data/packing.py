"""Packing POLAR pairs into fixed-shape batches (pure numpy; no Grain, no JAX).

A pair is one triplet's two token sequences, chosen and rejected, each ending with the
reward token. A pair is never split across rows. It is laid out unshared (two segments) or,
with `shared_prefix=True`, as its common prefix once and then the two suffixes (`data.batch`
describes both layouts); a pair's length for the planners is the tokens it takes in its layout
(`pair_tokens`). Every batch has static shapes; its arrays
(tokens_bt, segment_ids_bt, positions_bt, reward_index_bp2, pair_mask_bp, record_index_bp)
are declared once, with their dtypes and meanings, in `polar_jax.data.batch` (the batch contract).

Two modes:
- packed: pairs go into rows of length T by first-fit over a bounded number of open rows;
  when a pair fits no open row and all are open, the fullest row is closed. P = max pairs
  per row (static).
- padded (for comparison): one pair per row (P = 1) and the row length is the smallest
  bucket boundary that holds the pair; a batch holds pairs of one bucket only.

Planning works on lengths and integer keys only (`PackedPlanner`, `BucketPlanner`), so a
planner's whole state is a few lists of ints: this is what makes pipeline state exact and
small. `make_batch` then lays out the tokens of planned rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from polar_jax.data.batch import ALL_KEYS as BATCH_KEYS  # noqa: F401  (old name, kept for importers)
from polar_jax.data.batch import (  # noqa: F401  (PAD_ID and check_batch: moved to data/batch.py, kept here)
    PAD_ID,
    check_batch,
    pair_span,
    shared_prefix_length,
)


class PairTooLongError(ValueError):
    """A pair that does not fit the row length: it is never cut or dropped, so this is fatal."""


def record_source(meta: Mapping[str, Any] | None, fallback: str) -> str:
    """Where a record came from: its meta's "source" ("FILE:LINE"), "file"+"line", or `fallback`."""
    meta = meta or {}
    if meta.get("source"):
        return str(meta["source"])
    if meta.get("file"):
        return f"{meta['file']}:{meta['line']}" if meta.get("line") is not None else str(meta["file"])
    return fallback


def pair_tokens(pair: Mapping[str, Any], shared_prefix: bool) -> int:
    """Tokens `pair` ({"chosen", "rejected"}) takes in a row of its layout."""
    chosen, rejected = pair["chosen"], pair["rejected"]
    prefix = shared_prefix_length(chosen, rejected) if shared_prefix else 0
    return pair_span(len(chosen), len(rejected), prefix, shared_prefix)[0]


def check_pair_fits(
    chosen_len: int, rejected_len: int, limit: int, where: str, prefix_len: int | None = None, window: int = 0
) -> None:
    """Raise `PairTooLongError` naming `where` if the pair exceeds `limit` tokens of a row, or (with
    `window` > 0) one of its segments exceeds the attention window; `prefix_len`: the shared
    layout with that common prefix (None: unshared)."""
    if chosen_len < 1 or rejected_len < 1:
        raise ValueError(
            f"{where}: empty sequence (chosen {chosen_len}, rejected {rejected_len} tokens); "
            "every sequence ends with the reward token, re-run `prepare`"
        )
    total, span = pair_span(chosen_len, rejected_len, prefix_len or 0, prefix_len is not None)
    if window and span > window:
        raise PairTooLongError(
            f"{where}: a segment of {span} tokens exceeds the attention window of {window} "
            f"(data.attention_window, which every segment of a row must fit): raise it, or set it to -1 to take "
            f"the longest segment of the prepared data, or 0 for whole-row attention"
        )
    if total > limit:
        shared_note = f" ({total} with its common prefix once)" if prefix_len is not None else ""
        raise PairTooLongError(
            f"{where}: pair of {chosen_len} (chosen) + {rejected_len} (rejected) = "
            f"{chosen_len + rejected_len} tokens{shared_note} does not fit a row of {limit}; pairs are never cut "
            f"or dropped: raise the row length / largest bucket, or re-run `prepare` with "
            f"max_length <= {limit // 2} (and max_response_length to match) so every sequence is at most half a row"
        )


def default_buckets(seq_len: int, smallest: int = 256) -> tuple[int, ...]:
    """Powers of two from `smallest` below `seq_len`, then `seq_len`: the padding mode's row lengths."""
    buckets, b = [], smallest
    while b < seq_len:
        buckets.append(b)
        b *= 2
    return tuple(buckets) + (seq_len,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket boundary >= `length` (buckets sorted ascending); -1 if none."""
    i = int(np.searchsorted(np.asarray(buckets), length, side="left"))
    return int(buckets[i]) if i < len(buckets) else -1


# ---------------------------------------------------------------------------------------------
# Planners: decide which keys share a row and which rows share a batch. Lengths only.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchPlan:
    """One batch to build: its row length and, per row, the keys of the pairs in it (in order)."""

    row_len: int
    rows: list[list[int]]

    def to_state(self) -> list:
        """JSON-ready form."""
        return [self.row_len, [list(r) for r in self.rows]]

    @classmethod
    def from_state(cls, state: Sequence) -> BatchPlan:
        """Inverse of `to_state`."""
        return cls(int(state[0]), [[int(k) for k in r] for r in state[1]])


class PackedPlanner:
    """First-fit packing of pairs into rows of `seq_len` with at most `max_open_rows` open rows.

    `add(key, length)` returns the batches (of `batch_size` rows) completed by that pair;
    `flush()` closes every open row and returns what is left (the last batch may be short).
    """

    def __init__(self, *, batch_size: int, seq_len: int, max_pairs_per_row: int, max_open_rows: int = 16):
        if min(batch_size, seq_len, max_pairs_per_row, max_open_rows) < 1:
            raise ValueError(
                f"batch_size={batch_size}, seq_len={seq_len}, max_pairs_per_row={max_pairs_per_row} "
                f"and max_open_rows={max_open_rows} must all be >= 1"
            )
        self.batch_size, self.seq_len = batch_size, seq_len
        self.max_pairs_per_row, self.max_open_rows = max_pairs_per_row, max_open_rows
        # Open rows in opening order: first-fit scans oldest first, which fills old rows up.
        self._open_fill: list[int] = []
        self._open_rows: list[list[int]] = []
        self._open_lengths: list[list[int]] = []
        self._closed: list[list[int]] = []  # closed rows not yet handed out as a full batch

    def _close(self, i: int) -> None:
        self._closed.append(self._open_rows.pop(i))
        self._open_fill.pop(i)
        self._open_lengths.pop(i)

    def _full_batches(self) -> list[BatchPlan]:
        out = []
        while len(self._closed) >= self.batch_size:
            out.append(BatchPlan(self.seq_len, self._closed[: self.batch_size]))
            self._closed = self._closed[self.batch_size :]
        return out

    def add(self, key: int, length: int) -> list[BatchPlan]:
        """Place pair `key` (`length` = chosen + rejected tokens); return batches now complete."""
        if length > self.seq_len:
            raise PairTooLongError(f"pair {key}: {length} tokens does not fit a row of {self.seq_len}")
        for i, fill in enumerate(self._open_fill):
            if fill + length <= self.seq_len and len(self._open_rows[i]) < self.max_pairs_per_row:
                self._open_fill[i] += length
                self._open_rows[i].append(key)
                self._open_lengths[i].append(length)
                # A pair needs at least 2 tokens: a row with less room, or no pair slot, is done.
                if self.seq_len - self._open_fill[i] < 2 or len(self._open_rows[i]) == self.max_pairs_per_row:
                    self._close(i)
                return self._full_batches()
        if len(self._open_rows) == self.max_open_rows:
            # Closing the fullest row wastes the least; ties go to the oldest.
            self._close(int(np.argmax(self._open_fill)))
        self._open_fill.append(length)
        self._open_rows.append([key])
        self._open_lengths.append([length])
        if self.max_pairs_per_row == 1 or self.seq_len - length < 2:
            self._close(len(self._open_rows) - 1)
        return self._full_batches()

    def flush(self) -> list[BatchPlan]:
        """Close all open rows; return the remaining batches (the last may have fewer rows)."""
        while self._open_rows:
            self._close(0)
        out = self._full_batches()
        if self._closed:
            out.append(BatchPlan(self.seq_len, self._closed))
            self._closed = []
        return out

    def pending_keys(self) -> list[int]:
        """Keys placed but not yet handed out in a batch."""
        return [k for row in self._open_rows + self._closed for k in row]

    def get_state(self) -> dict:
        """JSON-ready state: the open rows (keys and lengths) and the closed rows not yet batched."""
        return {
            "open": [[[int(k), int(n)] for k, n in zip(r, ls)] for r, ls in zip(self._open_rows, self._open_lengths)],
            "closed": [[int(k) for k in r] for r in self._closed],
        }

    def set_state(self, state: Mapping) -> None:
        """Restore `get_state()` output exactly."""
        self._open_rows = [[int(k) for k, _ in r] for r in state["open"]]
        self._open_lengths = [[int(n) for _, n in r] for r in state["open"]]
        self._open_fill = [sum(ls) for ls in self._open_lengths]
        self._closed = [[int(k) for k in r] for r in state["closed"]]


class BucketPlanner:
    """Padding mode: one pair per row, rows grouped into batches of one bucket length each.

    `add(key, length)` returns the batch its bucket completes, if any; `flush()` returns the
    partly filled buckets, smallest first.
    """

    def __init__(self, *, batch_size: int, buckets: Sequence[int]):
        buckets = tuple(int(b) for b in buckets)
        if batch_size < 1 or not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 2:
            raise ValueError(
                f"batch_size={batch_size} must be >= 1 and buckets={buckets} strictly increasing boundaries >= 2"
            )
        self.batch_size, self.buckets = batch_size, buckets
        self._pending: list[list[int]] = [[] for _ in buckets]

    def add(self, key: int, length: int) -> list[BatchPlan]:
        """Queue pair `key` in the smallest bucket that holds `length` tokens."""
        row_len = bucket_for(length, self.buckets)
        if row_len < 0:
            raise PairTooLongError(f"pair {key}: {length} tokens exceeds the largest bucket {self.buckets[-1]}")
        i = self.buckets.index(row_len)
        self._pending[i].append(key)
        if len(self._pending[i]) < self.batch_size:
            return []
        rows, self._pending[i] = self._pending[i], []
        return [BatchPlan(row_len, [[k] for k in rows])]

    def flush(self) -> list[BatchPlan]:
        """The partly filled buckets as short batches, smallest bucket first."""
        out = [BatchPlan(b, [[k] for k in keys]) for b, keys in zip(self.buckets, self._pending) if keys]
        self._pending = [[] for _ in self.buckets]
        return out

    def pending_keys(self) -> list[int]:
        """Keys queued but not yet handed out in a batch."""
        return [k for keys in self._pending for k in keys]

    def get_state(self) -> dict:
        """JSON-ready state: the keys waiting in each bucket."""
        return {"pending": [[int(k) for k in keys] for keys in self._pending]}

    def set_state(self, state: Mapping) -> None:
        """Restore `get_state()` output exactly."""
        if len(state["pending"]) != len(self.buckets):
            raise ValueError(f"state has {len(state['pending'])} buckets, this planner {len(self.buckets)}")
        self._pending = [[int(k) for k in keys] for keys in state["pending"]]


def plan_packed_rows(
    lengths: Iterable[int], *, seq_len: int, max_pairs_per_row: int, max_open_rows: int = 16
) -> list[list[int]]:
    """Pack pairs of the given total lengths; rows of pair indices (all pairs, in closing order)."""
    planner = PackedPlanner(
        batch_size=1, seq_len=seq_len, max_pairs_per_row=max_pairs_per_row, max_open_rows=max_open_rows
    )
    rows = []
    for i, n in enumerate(lengths):
        rows += [p.rows[0] for p in planner.add(i, int(n))]
    rows += [r for p in planner.flush() for r in p.rows]
    return rows


# ---------------------------------------------------------------------------------------------
# Layout: planned rows of pairs -> the batch arrays.
# ---------------------------------------------------------------------------------------------


def make_batch(
    rows: Sequence[Sequence[Mapping[str, Any]]],
    *,
    row_len: int,
    max_pairs_per_row: int,
    batch_size: int | None = None,
    shared_prefix: bool = False,
) -> dict[str, np.ndarray]:
    """Lay out rows of pairs ({"chosen", "rejected"[, "record_index"]}) as one batch (`data.batch` contract),
    unshared or, with `shared_prefix`, each pair's common prefix once and then its two suffixes.

    Rows beyond `len(rows)` up to `batch_size` are all padding (no pairs), so shapes stay static.
    """
    b = len(rows) if batch_size is None else batch_size
    if len(rows) > b:
        raise ValueError(f"{len(rows)} rows do not fit batch_size={b}")
    tokens_bt = np.full((b, row_len), PAD_ID, np.int32)
    segment_ids_bt = np.zeros((b, row_len), np.int32)
    branch_ids_bt = np.zeros((b, row_len), np.int32)
    positions_bt = np.zeros((b, row_len), np.int32)
    reward_index_bp2 = np.zeros((b, max_pairs_per_row, 2), np.int32)
    pair_mask_bp = np.zeros((b, max_pairs_per_row), bool)
    record_index_bp = np.full((b, max_pairs_per_row), -1, np.int32)
    # One arange reused for every segment's positions: cheaper than an arange per segment.
    ramp_t = np.arange(row_len, dtype=np.int32)
    for r, row in enumerate(rows):
        if len(row) > max_pairs_per_row:
            raise ValueError(f"row {r} holds {len(row)} pairs; max_pairs_per_row={max_pairs_per_row}")
        start = 0
        for p, pair in enumerate(row):
            prefix = shared_prefix_length(pair["chosen"], pair["rejected"]) if shared_prefix else 0
            # (tokens, segment id, branch id, first position) of each piece of the pair's layout
            pieces = [(pair["chosen"][:prefix], p + 1, 0, 0)] if prefix else []
            for side, key in enumerate(("chosen", "rejected")):
                segment = p + 1 if shared_prefix else 2 * p + 1 + side
                pieces.append((pair[key][prefix:], segment, side + 1 if shared_prefix else 0, prefix))
            for seq, segment, branch, first in pieces:
                end = start + len(seq)
                if end > row_len:
                    raise PairTooLongError(f"row {r} overflows its {row_len} tokens at pair {p}")
                tokens_bt[r, start:end] = seq
                segment_ids_bt[r, start:end] = segment
                branch_ids_bt[r, start:end] = branch
                positions_bt[r, start:end] = ramp_t[first : first + end - start]
                start = end
            # The reward tokens: the last of the chosen piece and the last of the rejected one (the last piece).
            reward_index_bp2[r, p] = (start - len(pieces[-1][0]) - 1, start - 1)
            pair_mask_bp[r, p] = True
            record_index_bp[r, p] = pair.get("record_index", -1)
    return {
        "tokens_bt": tokens_bt,
        "segment_ids_bt": segment_ids_bt,
        "branch_ids_bt": branch_ids_bt,
        "positions_bt": positions_bt,
        "reward_index_bp2": reward_index_bp2,
        "pair_mask_bp": pair_mask_bp,
        "record_index_bp": record_index_bp,
    }


def pack_pairs(
    pairs: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seq_len: int,
    max_pairs_per_row: int,
    max_open_rows: int = 16,
    shared_prefix: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Packed mode over an in-memory list of pairs: all batches (the last padded with empty rows)."""
    planner = PackedPlanner(
        batch_size=batch_size, seq_len=seq_len, max_pairs_per_row=max_pairs_per_row, max_open_rows=max_open_rows
    )
    plans = []
    for i, pair in enumerate(pairs):
        prefix = shared_prefix_length(pair["chosen"], pair["rejected"]) if shared_prefix else None
        where = record_source(pair.get("meta"), f"pair {i}")
        check_pair_fits(len(pair["chosen"]), len(pair["rejected"]), seq_len, where, prefix)
        plans += planner.add(i, pair_tokens(pair, shared_prefix))
    plans += planner.flush()
    return [
        make_batch(
            [[pairs[k] for k in row] for row in plan.rows],
            row_len=plan.row_len,
            max_pairs_per_row=max_pairs_per_row,
            batch_size=batch_size,
            shared_prefix=shared_prefix,
        )
        for plan in plans
    ]


def pad_pairs(
    pairs: Sequence[Mapping[str, Any]], *, batch_size: int, buckets: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Padding mode over an in-memory list of pairs: one pair per row, batches per bucket."""
    planner = BucketPlanner(batch_size=batch_size, buckets=buckets)
    plans = []
    for i, pair in enumerate(pairs):
        lc, lr = len(pair["chosen"]), len(pair["rejected"])
        check_pair_fits(lc, lr, planner.buckets[-1], record_source(pair.get("meta"), f"pair {i}"))
        plans += planner.add(i, lc + lr)
    plans += planner.flush()
    return [
        make_batch(
            [[pairs[k] for k in row] for row in plan.rows],
            row_len=plan.row_len,
            max_pairs_per_row=1,
            batch_size=batch_size,
        )
        for plan in plans
    ]


def useful_token_fraction(batches: Iterable[Mapping[str, np.ndarray]]) -> float:
    """Real tokens / all token slots (sum of B*T) over the given batches."""
    real = total = 0
    for batch in batches:
        seg_bt = batch["segment_ids_bt"]
        real += int(np.count_nonzero(seg_bt))
        total += seg_bt.size
    return real / total if total else 0.0


def unpack_batch(batch: Mapping[str, np.ndarray]) -> list[dict]:
    """The real pairs of a batch: {"row", "slot", "record_index", "chosen", "rejected"} each.

    The inverse of `make_batch`, for tests and debugging: pair p's chosen sequence is segment
    2p+1 of its row, its rejected sequence segment 2p+2; in the shared layout segment p+1's
    prefix followed by its branch 1 (chosen) or branch 2 (rejected).
    """
    out = []
    for r, p in zip(*np.nonzero(batch["pair_mask_bp"])):
        seg_t, branch_t, tokens_t = batch["segment_ids_bt"][r], batch["branch_ids_bt"][r], batch["tokens_bt"][r]
        if branch_t.any():
            in_pair_t = seg_t == p + 1
            chosen = tokens_t[in_pair_t & (branch_t != 2)]
            rejected = tokens_t[in_pair_t & (branch_t != 1)]
        else:
            chosen, rejected = tokens_t[seg_t == 2 * p + 1], tokens_t[seg_t == 2 * p + 2]
        out.append(
            {
                "row": int(r),
                "slot": int(p),
                "record_index": int(batch["record_index_bp"][r, p]),
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return out
