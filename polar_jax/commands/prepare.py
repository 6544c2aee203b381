"""Tokenise JSONL triplets ({prompt, reference, chosen, rejected, meta}) into ArrayRecord shards
for training, in the official POLAR encoding: DIR/triplets-*.array_record, encoding.json,
tokenizer/ (as used, added tokens included) and stats.json. Bad rows stop the run at their
FILE:LINE unless --skip-invalid is given. --input takes files and directories (their *.jsonl files,
sorted; a file named twice is read once); an empty input file is an error."""

from __future__ import annotations

import argparse
import json

from polar_jax.data import encoding, prepare, schema
from polar_jax.io import paths

_DEFAULTS = encoding.EncodingConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `prepare`."""
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR",
        help="JSONL triplet files, or directories of *.jsonl files (sorted), read in order",
    )
    parser.add_argument("--tokenizer", required=True, metavar="TOK", help="HF tokenizer directory or .gguf file")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip bad rows (counted by reason in stats.json) instead of stopping",
    )
    parser.add_argument(
        "--max-row-bytes",
        type=int,
        default=schema.MAX_ROW_BYTES,
        metavar="N",
        help=f"a longer JSONL line is a bad row (too_long), refused before it is parsed (default {schema.MAX_ROW_BYTES})",
    )
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: all CPU cores)")
    parser.add_argument("--shards", type=int, default=1, help="number of ArrayRecord files")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run a checkpoint's own tokenizer code (InternLM2); read it first",
    )
    parser.add_argument(
        "--add-special-tokens",
        action="store_true",
        help="add the split and reward tokens to the tokenizer if it lacks them (the vocab grows; "
        "encoding.json records the new size so training grows the embedding)",
    )
    parser.add_argument(
        "--wrapper",
        choices=("sft", "pretrain"),
        default=_DEFAULTS.wrapper,
        help="sft: newline between prompt and response; pretrain: none",
    )
    parser.add_argument("--max-length", type=int, default=_DEFAULTS.max_length, help="tokens per sequence, 4 reserved")
    parser.add_argument(
        "--max-response-length", type=int, default=_DEFAULTS.max_response_length, help="tokens per response"
    )
    parser.add_argument(
        "--response-cut-side",
        choices=("right", "left"),
        default=_DEFAULTS.response_cut_side,
        help="which end of a too-long response is cut",
    )
    parser.add_argument("--split-text", default=_DEFAULTS.split_text, help="the token between the two halves")
    parser.add_argument("--reward-token", default=_DEFAULTS.reward_token, help="the token the reward is read at")


def run(args: argparse.Namespace) -> int:
    """Run prepare and print what it wrote; bad data or settings are user errors (one line, exit 2)."""
    # DataError / PrepareError / a bad EncodingConfig / a missing file: one line, exit 2 (-v: traceback)
    cfg = encoding.EncodingConfig(
        max_length=args.max_length,
        max_response_length=args.max_response_length,
        response_cut_side=args.response_cut_side,
        wrapper=args.wrapper,
        split_text=args.split_text,
        reward_token=args.reward_token,
    )
    inputs = paths.expand_inputs(args.input)  # directories, files named twice: as score and evaluate do
    paths.check_not_empty(inputs)
    stats = prepare.prepare(
        inputs,
        args.tokenizer,
        args.output,
        cfg,
        skip_invalid=args.skip_invalid,
        workers=args.workers,
        shards=args.shards,
        add_special_tokens=args.add_special_tokens,
        trust_remote_code=args.trust_remote_code,
        max_row_bytes=args.max_row_bytes,
    )
    lengths = stats["sequence_length"]
    print(
        f"wrote {stats['rows_written']} triplets to {args.output} in {len(stats['shards'])} shard(s): "
        f"{stats['examples_per_s']} rows/s, sequence length min {lengths['min']} median {lengths['median']} max {lengths['max']}"
    )
    if stats["rows_truncated"]:
        print(f"truncated rows: {stats['rows_truncated']} ({json.dumps(stats['truncated'])})")
    if stats["rows_skipped"]:
        print(f"skipped {stats['rows_skipped']} invalid rows:")
        for reason, entry in stats["skipped"].items():
            print(f"  {reason}: {entry['count']} (first: {entry['examples'][0]})")
    return 0
