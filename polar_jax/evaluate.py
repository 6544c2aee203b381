"""Pair accuracy of a POLAR reward model on `{prompt, reference, chosen, rejected[, meta]}` triplets.

For each triplet the model scores both candidates against the same prompt and reference,
with the official encoding (`data.encoding`):

    r_c = r(prompt, reference, chosen)        r_r = r(prompt, reference, rejected)

A pair is correct when r_c > r_r; a tie counts one half, so a constant model scores exactly
chance (0.5). Each group reports n, accuracy, the mean margin (r_c - r_r), the mean r_c and
the mean r_r, how many pairs tied, and a 95% Wilson score interval for the accuracy
(`wilson_interval`: the interval that stays inside [0, 1] and is honest at small n).

Groups:
- "all": every triplet.
- Policy discrimination ("seen_policies" / "unseen_policies"): triplets written by `synth`
  name their policies in `meta` (`reference_policy`, `chosen_policy`, `rejected_policy`).
  Given the set of policies seen in training (`seen_policies`, or `policies_in(train files)`),
  a triplet is seen when every policy it names is in the set, else unseen. Triplets that name
  no policy are counted as "no_provenance" (only when a seen set is given).
- "category=<name>": by `meta.category` where rows carry one.

The paper's preference protocol (Dou et al., arXiv 2507.05197: RMB and in-house sets) is this same
computation on any `{prompt, reference, chosen, rejected}` file: for a prompt with responses
ranked by annotators, the top-ranked response is the reference, rank 2 the chosen and rank 3
the rejected; the preference accuracy is the "all" (or "category=...") accuracy here.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable

import numpy as np

from polar_jax import scoring
from polar_jax.data import encoding, schema
from polar_jax.io import paths as paths_lib
from polar_jax.io.model import Model

log = logging.getLogger(__name__)

ALL = "all"
SEEN = "seen_policies"
UNSEEN = "unseen_policies"
NO_PROVENANCE = "no_provenance"
CATEGORY_PREFIX = "category="
# The `meta` keys where `synth` records which policy wrote each text.
POLICY_KEYS = ("reference_policy", "chosen_policy", "rejected_policy")
CHANCE = 0.5


def expand_paths(paths: Iterable[str | os.PathLike], flag: str = "--input") -> list[pathlib.Path]:
    """Files as given, and each directory as its `*.jsonl` files (sorted), each file once
    (`io.paths.expand_inputs`, the rule every command follows); an error for a path that does not
    exist or a directory without `*.jsonl` files."""
    return paths_lib.expand_inputs(paths, flag)


def read_triplets(
    paths: Iterable[str | os.PathLike], skip_invalid: bool = False, report: schema.SkipReport | None = None
) -> list[dict]:
    """The valid triplet rows of JSONL files and directories of them, in order.

    A bad row raises `schema.DataError` naming FILE:LINE, unless `skip_invalid` (then it is
    counted in `report`).
    """
    return [
        row.data for path in expand_paths(paths) for row in schema.read_jsonl(path, "triplet", skip_invalid, report)
    ]


def row_policies(row: dict) -> set[str]:
    """The policy names a row's `meta` records (empty when it has no provenance)."""
    meta = row.get("meta") or {}
    return {meta[k] for k in POLICY_KEYS if isinstance(meta.get(k), str) and meta[k]}


def policies_in(
    paths: Iterable[str | os.PathLike], skip_invalid: bool = False, report: schema.SkipReport | None = None
) -> set[str]:
    """The union of policy names in the `meta` of triplet files (or directories of them)."""
    names: set[str] = set()
    for row in read_triplets(paths, skip_invalid, report):
        names |= row_policies(row)
    return names


def pair_rewards(
    model: Model,
    tokenizer,
    rows: list[dict],
    enc_cfg: encoding.EncodingConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    shared_prefix: bool = True,
    across_processes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen_n, r_rejected_n): float32 rewards of each triplet's chosen and rejected
    candidates against its prompt and reference, in row order (`shared_prefix`: a triplet's
    common prefix computed once, the same rewards; `across_processes`: the processes of a
    multi-process run share the batches and each gets every reward; `scoring.reward_scores`)."""
    enc_cfg = enc_cfg or encoding.EncodingConfig()
    reward_id = scoring.reward_token_id_for(model, tokenizer, enc_cfg)
    pairs = [encoding.encode_triplet(tokenizer, row, enc_cfg, reward_id) for row in rows]
    truncated = sum(bool(p.truncated) for p in pairs)
    if truncated:
        log.warning(
            "%d of %d triplets were truncated to max_length=%d / max_response_length=%d",
            truncated,
            len(rows),
            enc_cfg.max_length,
            enc_cfg.max_response_length,
        )
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rewards_2n = scoring.reward_scores(
        model.cfg,
        model.params,
        sequences,
        batch_size=batch_size,
        progress=progress,
        shared_prefix=shared_prefix,
        across_processes=across_processes,
    )
    return rewards_2n[: len(rows)], rewards_2n[len(rows) :]


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (default 95%) for a proportion `accuracy` observed over `n`
    trials (Wilson 1927): centre (p + z^2/2n) / (1 + z^2/n), half-width
    z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n). (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (accuracy + z2 / (2 * n)) / denom
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / denom
    return (float(max(centre - half, 0.0)), float(min(centre + half, 1.0)))


def pair_stats(r_chosen_n: np.ndarray, r_rejected_n: np.ndarray) -> dict:
    """n, accuracy (ties count 0.5), its 95% Wilson interval `ci95` [low, high], mean margin
    r_c - r_r, mean r_c, mean r_r and the tie count.

    An empty group has n 0 and None for the means and the interval.
    """
    r_chosen_n = np.asarray(r_chosen_n, np.float64)
    r_rejected_n = np.asarray(r_rejected_n, np.float64)
    n = len(r_chosen_n)
    if n == 0:
        return {
            "n": 0,
            "accuracy": None,
            "ci95": None,
            "margin": None,
            "mean_chosen": None,
            "mean_rejected": None,
            "ties": 0,
        }
    wins, ties = int(np.sum(r_chosen_n > r_rejected_n)), int(np.sum(r_chosen_n == r_rejected_n))
    accuracy = (wins + 0.5 * ties) / n
    return {
        "n": n,
        "accuracy": accuracy,
        "ci95": list(wilson_interval(accuracy, n)),
        "margin": float(np.mean(r_chosen_n - r_rejected_n)),
        "mean_chosen": float(np.mean(r_chosen_n)),
        "mean_rejected": float(np.mean(r_rejected_n)),
        "ties": ties,
    }


def group_masks(rows: list[dict], seen_policies: set[str] | None = None) -> dict[str, np.ndarray]:
    """Group name -> bool [N] membership mask over `rows` (see the module docstring for groups).

    The seen / unseen groups appear (possibly empty) only when `seen_policies` is given;
    "no_provenance" and the categories only when they have members.
    """
    n = len(rows)
    masks = {ALL: np.ones(n, bool)}
    if seen_policies is not None:
        named = [row_policies(row) for row in rows]
        has_provenance_n = np.array([bool(p) for p in named], bool)
        seen_n = np.array([bool(p) and p <= seen_policies for p in named], bool)
        masks[SEEN] = seen_n
        masks[UNSEEN] = has_provenance_n & ~seen_n
        if not has_provenance_n.all():
            masks[NO_PROVENANCE] = ~has_provenance_n
    categories = [(row.get("meta") or {}).get("category") for row in rows]
    for name in sorted({str(c) for c in categories if c is not None}):
        masks[CATEGORY_PREFIX + name] = np.array([c is not None and str(c) == name for c in categories], bool)
    return masks


def group_stats(
    rows: list[dict], r_chosen_n: np.ndarray, r_rejected_n: np.ndarray, seen_policies: set[str] | None = None
) -> dict[str, dict]:
    """Group name -> `pair_stats` of the rows in that group, given each row's two rewards."""
    if not (len(rows) == len(r_chosen_n) == len(r_rejected_n)):
        raise ValueError(f"{len(rows)} rows but {len(r_chosen_n)} chosen and {len(r_rejected_n)} rejected rewards")
    r_chosen_n, r_rejected_n = np.asarray(r_chosen_n), np.asarray(r_rejected_n)
    return {
        name: pair_stats(r_chosen_n[mask], r_rejected_n[mask])
        for name, mask in group_masks(rows, seen_policies).items()
    }


def evaluate_triplets(
    model: Model,
    tokenizer,
    rows: list[dict],
    enc_cfg: encoding.EncodingConfig | None = None,
    seen_policies: set[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    across_processes: bool = False,
) -> dict[str, dict]:
    """Score every triplet's chosen and rejected candidates and return group name -> stats
    (`pair_stats` keys): "all", the seen / unseen split when `seen_policies` is given, categories.
    `across_processes`: the processes of a multi-process run share the scoring (`pair_rewards`);
    each gets every reward, so the stats are over all rows and equal one process's."""
    if not rows:
        raise ValueError("no triplets to evaluate")
    r_chosen_n, r_rejected_n = pair_rewards(
        model, tokenizer, rows, enc_cfg, batch_size, progress, across_processes=across_processes
    )
    return group_stats(rows, r_chosen_n, r_rejected_n, seen_policies)


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one line per group with n, accuracy, its 95% interval, margin, mean r_c, mean r_r."""

    def num(value, spec: str, width: int = 9) -> str:
        return ("-" if value is None else format(value, spec)).rjust(width)

    width = max(len("group"), *(len(name) for name in results))
    lines = [
        f"{'group':<{width}}  {'n':>7}  {'accuracy':>8}  {'95% interval':>15}  {'margin':>9}  {'mean r_c':>9}  "
        f"{'mean r_r':>9}"
    ]
    for name, s in results.items():
        ci = "-" if s.get("ci95") is None else f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
        lines.append(
            f"{name:<{width}}  {s['n']:>7d}  {num(s['accuracy'], '.4f', 8)}  {ci:>15}  {num(s['margin'], '+.4f')}  "
            f"{num(s['mean_chosen'], '+.4f')}  {num(s['mean_rejected'], '+.4f')}"
        )
    lines.append(f"(accuracy: chosen scored above rejected, ties count 0.5; chance {CHANCE})")
    return "\n".join(lines)
