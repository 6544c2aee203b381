"""Shared-prefix groups for scoring: candidates that share a prefix, laid out in rows (pure numpy).

A group is a list of id sequences (candidates, each ending with the reward token) that scoring
lays out as ONE segment of a row: the longest common prefix of all of them once (branch 0,
positions 0..L-1, `common_prefix_length`), then each candidate's suffix (candidate i: branch
i + 1, positions from L). Attention lets a suffix see its prefix and itself, never a sibling
(`models.attention`), so every candidate's reward is what it would be laid out whole, and the
prefix is computed once. A candidate's reward is read at its suffix's last token.

    group_by_prefix    which sequences form a group (a speed-up only: any grouping is exact)
    plan_rows          first-fit of whole groups into rows (a group longer than a row is an error)
    layout_rows        the arrays of planned rows

Shapes are spelt by suffix letters: b rows, t tokens per row, n candidate slots per row (N, static).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from polar_jax.data.batch import PAD_ID


class GroupTooLongError(ValueError):
    """A group that does not fit a row: groups are never cut or dropped, so this is fatal."""


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens a group computes once: the longest common prefix of all its id sequences, leaving each
    at least its last token (the reward token) as its own suffix (`batch.shared_prefix_length` for k)."""
    if not sequences:
        raise ValueError("a group needs at least one sequence")
    n = min(len(s) for s in sequences) - 1
    if n <= 0:
        return 0
    first = np.asarray(sequences[0][:n])
    for other in sequences[1:]:
        differ = np.flatnonzero(first[:n] != np.asarray(other[:n]))
        n = int(differ[0]) if differ.size else n
        if n == 0:
            break
    return n


def group_span(lengths: Sequence[int], prefix_len: int) -> int:
    """Tokens of a row a group takes: its prefix once, then every candidate's suffix."""
    return prefix_len + sum(length - prefix_len for length in lengths)


def _raw_common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two id sequences (no token reserved)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def group_by_prefix(
    sequences: Sequence[np.ndarray], max_group: int = 16, min_shared: int = 16, max_span: int | None = None
) -> list[list[int]]:
    """Groups of input indices (each group in input order; every index in exactly one group).

    Sequences are sorted by their ids, so those with the longest common prefixes are neighbours,
    and a walk over that order adds the next sequence to the current group when (1) the group's
    common prefix with it (`common_prefix_length`) is at least `min_shared` tokens, (2) this computes
    fewer tokens than leaving it out (k L' > (k - 1) L for a group of k with prefix L, L' with it),
    (3) the group stays within `max_group` candidates and (4) `max_span` tokens of a row.
    Encoded POLAR sequences ("prompt\\nreference<split>prompt\\ncandidate") of one prompt and
    reference share their ids up to the candidate, so they land in one group; the rule reads ids
    only (no tokenizer, no marker), and as sharing is exact for any grouping (the layout computes
    each candidate's own tokens and prefix only), a wrong grouping can cost speed, never a score.
    """
    if max_group < 1 or min_shared < 1:
        raise ValueError(f"max_group={max_group} and min_shared={min_shared} must be >= 1")
    arrays = [np.asarray(s) for s in sequences]
    # Big-endian bytes of the (non-negative) ids sort as the id lists do, at 4 bytes a token.
    order = sorted(range(len(arrays)), key=lambda i: arrays[i].astype(">u4").tobytes())
    groups: list[list[int]] = []
    members: list[int] = []
    raw, shortest = 0, 0  # the current group's raw common prefix and its shortest member
    for i in order:
        if members:
            new_raw = min(raw, _raw_common_prefix(arrays[members[-1]], arrays[i]))
            new_shortest = min(shortest, len(arrays[i]))
            k, old, new = len(members), min(raw, shortest - 1), min(new_raw, new_shortest - 1)
            lengths = [len(arrays[m]) for m in members] + [len(arrays[i])]
            if (
                new >= min_shared
                and k * new > (k - 1) * old
                and k < max_group
                and (max_span is None or group_span(lengths, new) <= max_span)
            ):
                members.append(i)
                raw, shortest = new_raw, new_shortest
                continue
            groups.append(sorted(members))
        members, raw, shortest = [i], len(arrays[i]), len(arrays[i])
    if members:
        groups.append(sorted(members))
    return groups


def plan_rows(
    spans: Sequence[int],
    counts: Sequence[int],
    row_len: int,
    max_candidates: int,
    sources: Sequence[str] | None = None,
) -> list[list[int]]:
    """First-fit of whole groups (group g: `spans[g]` tokens, `counts[g]` candidates), in the order
    given, into rows of `row_len` tokens and `max_candidates` candidate slots: the groups of each row.

    A group that fits no row raises `GroupTooLongError` naming it (and `sources[g]` when given).
    """
    rows: list[list[int]] = []
    used_tokens: list[int] = []
    used_slots: list[int] = []
    for g, (span, count) in enumerate(zip(spans, counts)):
        if span > row_len or count > max_candidates:
            where = f"group {g}" + (f" ({sources[g]})" if sources is not None else "")
            raise GroupTooLongError(
                f"{where}: {count} candidates in {span} tokens (its common prefix once) do not fit a row of "
                f"{row_len} tokens and {max_candidates} candidates; groups are never cut or dropped: "
                "use wider rows or a smaller group"
            )
        for r in range(len(rows)):
            if used_tokens[r] + span <= row_len and used_slots[r] + count <= max_candidates:
                rows[r].append(g)
                used_tokens[r] += span
                used_slots[r] += count
                break
        else:
            rows.append([g])
            used_tokens.append(span)
            used_slots.append(count)
    return rows


@dataclasses.dataclass(frozen=True)
class GroupRows:
    """Laid-out rows of groups; `candidate_bn` says which candidate each reward slot holds (-1: none)."""

    tokens_bt: np.ndarray  # int32, PAD_ID on padding
    segment_ids_bt: np.ndarray  # int32: group j of a row is segment j + 1; 0 = padding
    branch_ids_bt: np.ndarray  # int32: 0 = the group's prefix, i + 1 = candidate i's suffix
    positions_bt: np.ndarray  # int32: 0..L-1 on the prefix, from L on each suffix; 0 on padding
    reward_index_bn: np.ndarray  # int32: index in the row of each candidate's last token; 0 if none
    candidate_mask_bn: np.ndarray  # bool: which slots hold a candidate
    candidate_bn: np.ndarray  # int32: the caller's key of the candidate in each slot; -1 if none
    longest_segment: int  # tokens of the longest group laid out (what `attention_window` must cover)


def layout_rows(
    groups: Sequence[Sequence[np.ndarray]],
    keys: Sequence[Sequence[int]],
    rows: Sequence[Sequence[int]],
    row_len: int,
    max_candidates: int,
    batch_size: int | None = None,
) -> GroupRows:
    """Lay out `rows` (each a list of group indices, as `plan_rows` gives) of `groups` (each a list of
    id sequences, with the caller's `keys` for them, each >= 0) as `GroupRows` of `batch_size` rows (default:
    len(rows); rows beyond are padding) of `row_len` tokens and `max_candidates` slots."""
    b = len(rows) if batch_size is None else batch_size
    if len(rows) > b:
        raise ValueError(f"{len(rows)} rows do not fit batch_size={b}")
    out = {name: np.zeros((b, row_len), np.int32) for name in ("tokens", "segment_ids", "branch_ids", "positions")}
    out["tokens"][:] = PAD_ID
    reward_index_bn = np.zeros((b, max_candidates), np.int32)
    candidate_bn = np.full((b, max_candidates), -1, np.int32)
    longest = 0
    for r, row in enumerate(rows):
        start, slot = 0, 0
        for j, g in enumerate(row):
            sequences = groups[g]
            prefix = common_prefix_length(sequences)
            pieces = [(sequences[0][:prefix], 0, 0)] if prefix else []
            pieces += [(s[prefix:], i + 1, prefix) for i, s in enumerate(sequences)]
            group_start = start
            for ids, branch, first in pieces:
                end = start + len(ids)
                if end > row_len or slot >= max_candidates:
                    raise GroupTooLongError(f"row {r} overflows its {row_len} tokens or slots at group {g}")
                out["tokens"][r, start:end] = ids
                out["segment_ids"][r, start:end] = j + 1
                out["branch_ids"][r, start:end] = branch
                out["positions"][r, start:end] = np.arange(first, first + end - start)
                start = end
                if branch:
                    reward_index_bn[r, slot] = end - 1
                    candidate_bn[r, slot] = keys[g][branch - 1]
                    slot += 1
            longest = max(longest, start - group_start)
    return GroupRows(
        out["tokens"],
        out["segment_ids"],
        out["branch_ids"],
        out["positions"],
        reward_index_bn,
        candidate_bn >= 0,
        candidate_bn,
        longest,
    )
