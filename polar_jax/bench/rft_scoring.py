"""Section (c) of `bench.shared_prefix`: RFT groups scored through `scoring.reward_scores`, forward only.

Each group is --rollouts rollouts of one prompt scored against one reference (the sequences of a
group share `prompt "\\n" reference <reward> prompt "\\n"`), as an RFT iteration scores them:
`shared_prefix=False` (one sequence a row, padded to a multiple of 128: the path before issue #16)
against `shared_prefix=True` (each group's prefix computed once, `data.groups`), timed side by side.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from polar_jax import scoring
from polar_jax.bench import pair_lengths
from polar_jax.bench.common import print_table
from polar_jax.bench.shared_prefix import DEMO_MODEL, EXACT_RTOL, relative_difference, time_rounds
from polar_jax.data import groups as groups_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig


def group_sequences(groups: list) -> list[np.ndarray]:
    """The scored sequences of `groups` ((prefix, candidates) each), group after group."""
    return [pair_lengths.scored_sequence(prefix, c) for prefix, candidates in groups for c in candidates]


def shared_tokens(groups: list) -> int:
    """Tokens of `groups` with each group's common prefix once (`data.groups.group_span`)."""
    total = 0
    for prefix, candidates in groups:
        seqs = [pair_lengths.scored_sequence(prefix, c) for c in candidates]
        total += groups_lib.group_span([len(s) for s in seqs], groups_lib.common_prefix_length(seqs))
    return total


def padded_slots(sequences: list[np.ndarray], batch_size: int, pad_multiple: int = 128) -> int:
    """Token slots the unshared path computes: sorted by length, `batch_size` rows a call, padded widths."""
    lengths = sorted(len(s) for s in sequences)
    widths = [
        -(-max(lengths[i : i + batch_size]) // pad_multiple) * pad_multiple for i in range(0, len(lengths), batch_size)
    ]
    return sum(w * batch_size for w in widths)


def rft_section(args: argparse.Namespace) -> None:
    """Scores/s of RFT groups, unshared against shared, with the token ratio and the scores' agreement."""
    from polar_jax.bench.train_step import MODELS

    shape = DEMO_MODEL if args.rft_model == "demo" else MODELS[args.rft_model]
    cfg = ModelConfig(**shape, heads=("reward",), dtype="float32")
    params = T.init_params(cfg, jax.random.key(0))
    groups = pair_lengths.rft_groups(args.groups, args.rollouts, cfg.vocab_size, args.rft_prompt, args.rft_response)
    sequences = group_sequences(groups)
    results = {}

    def scorer(shared: bool):
        """One epoch of scoring every sequence with `shared_prefix=shared` (the scores kept for the check)."""

        def epoch() -> None:
            results[shared] = scoring.reward_scores(
                cfg, params, sequences, batch_size=args.rft_batch, progress=False, shared_prefix=shared
            )

        return epoch

    seconds = time_rounds([scorer(False), scorer(True)], args.repeats)
    real = sum(len(s) for s in sequences)
    diff = relative_difference(results[True], results[False])
    rows = [
        {
            "path": "reward_scores(shared_prefix=False)",
            "scores/s": f"{len(sequences) / seconds[0]:,.0f}",
            "speedup": "1.00x",
            "tokens": "1.00",
            "score diff": "0.0e+00",
        },
        {
            "path": "reward_scores(shared_prefix=True)",
            "scores/s": f"{len(sequences) / seconds[1]:,.0f}",
            "speedup": f"{seconds[0] / seconds[1]:.2f}x",
            "tokens": f"{shared_tokens(groups) / real:.2f}",
            "score diff": f"{diff:.1e}",
        },
    ]
    print_table(
        rows,
        f"(c) RFT scoring: {args.groups} groups x {args.rollouts} rollouts against one reference (prompts "
        f"log-uniform 1..{args.rft_prompt}, reference and rollouts {max(args.rft_response // 4, 1)}.."
        f"{args.rft_response} tokens), {args.rft_model} reward model ({cfg.num_params() / 1e6:.2f}M params), batch {args.rft_batch} rows, forward only, median of "
        f"{args.repeats} epochs; tokens: real tokens computed / unshared real tokens ({real}); the unshared path's "
        f"padded slots: {padded_slots(sequences, args.rft_batch)}",
    )
    verdict = "equal to" if diff <= EXACT_RTOL else "NOT equal to"
    print(
        f"  shared: {seconds[0] / seconds[1]:.2f}x scores/s; scores {verdict} the unshared ones (rtol {EXACT_RTOL:g})"
    )
