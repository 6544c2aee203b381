"""Score {prompt, reference, output} rows (the official client's format; strings or message
lists) with a POLAR reward model: each output row is the input row plus "reward".

    python -m polar_jax score --model DIR --input rows.jsonl --output scored.jsonl

The tokenizer defaults to the model directory's; the reward token to the model config's
`reward_token_id` (released checkpoints carry it). Bad rows stop the run at FILE:LINE unless
--skip-invalid is given (skipped rows are counted and reported, and not written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from polar_jax import scoring
from polar_jax.data import encoding, schema
from polar_jax.io import models

log = logging.getLogger(__name__)
_DEFAULTS = encoding.EncodingConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `score`."""
    parser.add_argument("--model", required=True, help="reward model: HF directory, polar_jax directory")
    parser.add_argument("--input", required=True, help="JSONL rows {prompt, reference, output[, meta]}")
    parser.add_argument("--output", required=True, help="JSONL written: each row with its \"reward\"")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory or .gguf (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted) instead of stopping")
    add_encoding_arguments(parser)


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The encoding and dtype flags shared by the commands that score with a reward model."""
    parser.add_argument("--wrapper", choices=("sft", "pretrain"), default=_DEFAULTS.wrapper)
    parser.add_argument("--max-length", type=int, default=_DEFAULTS.max_length)
    parser.add_argument("--max-response-length", type=int, default=_DEFAULTS.max_response_length)
    parser.add_argument("--response-cut-side", choices=("right", "left"), default=_DEFAULTS.response_cut_side)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")


def encoding_config_from_args(args: argparse.Namespace) -> encoding.EncodingConfig:
    """The EncodingConfig that `add_encoding_arguments` flags describe."""
    return encoding.EncodingConfig(max_length=args.max_length, max_response_length=args.max_response_length,
                                   response_cut_side=args.response_cut_side, wrapper=args.wrapper)


def run(args: argparse.Namespace) -> int:
    """Read and validate rows, score them, write them with their rewards."""
    enc_cfg = encoding_config_from_args(args)
    report = schema.SkipReport()
    try:
        rows = [r.data for r in schema.read_jsonl(args.input, "score", args.skip_invalid, report)]
    except schema.DataError as e:
        print(f"score: error: {e}", file=sys.stderr)
        return 1
    model = models.load_model(args.model, dtype=args.dtype)
    tokenizer = models.load_tokenizer(args.tokenizer or args.model)
    rewards = scoring.score_rows(model, tokenizer, rows, enc_cfg, batch_size=args.batch_size)
    with open(args.output, "w") as f:
        for row, reward in zip(rows, rewards):
            f.write(json.dumps({**row, "reward": float(reward)}, ensure_ascii=False) + "\n")
    if report.invalid:
        log.warning("skipped %d invalid rows: %s", report.invalid, report.summary())
    log.info("scored %d rows -> %s", len(rows), args.output)
    return 0
