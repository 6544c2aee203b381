"""Score {prompt, reference, output} rows (the official client's format; strings or message
lists) with a POLAR reward model: each output row is the input row plus "reward".

    python -m polar_jax score --model DIR --input rows.jsonl [more.jsonl DIR ...] --output scored.jsonl

--input takes files and directories (their *.jsonl files, sorted; a file named twice is read once);
an empty input file is an error. --output is checked before any work and written atomically.

The tokenizer defaults to the model directory's; the reward token to the model config's
`reward_token_id` (released checkpoints carry it, and so do models `train` writes); the
encoding (lengths, cut side, wrapper) to the model directory's `encoding.json`, which `train`
writes, else the official client's defaults. A row's "wrapper" field overrides --wrapper. Bad rows stop the run at FILE:LINE unless
--skip-invalid is given (skipped rows are counted and reported, and not written).

On several processes (--coordinator HOST:PORT --num-processes N --process-id I on each, or
--multihost; `commands.processes`) every process reads and encodes all rows, the length-sorted
scoring batches go round-robin to the processes (batch k to process k % N, each on its own first
device: process-local, no global mesh), the rewards are gathered, and process 0 writes the one
--output in input order: the same file, byte for byte, as one process writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os

import jax

from polar_jax import scoring
from polar_jax.commands import processes
from polar_jax.data import encoding, schema
from polar_jax.io import models, paths, tokenizers

log = logging.getLogger(__name__)
_DEFAULTS = encoding.EncodingConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `score`."""
    parser.add_argument("--model", required=True, metavar="DIR", help="reward model: HF directory, polar_jax directory")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="FILE_OR_DIR",
        help="JSONL rows {prompt, reference, output[, meta]}: files, or directories of *.jsonl files (sorted)",
    )
    parser.add_argument("--output", required=True, metavar="FILE", help='JSONL written: each row with its "reward"')
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory or .gguf (default: the model's)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run a checkpoint's own tokenizer code (InternLM2); read it first",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows scored per forward pass")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted) instead of stopping")
    parser.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="lay every row out whole (default: rows of one prompt and reference compute their common prefix "
        "once; the same rewards, faster)",
    )
    add_encoding_arguments(parser)
    processes.add_arguments(parser)


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The encoding and dtype flags shared by the commands that score with a reward model.

    Each encoding flag defaults to the model directory's `encoding.json` (what `train` used),
    else to the official client's value; a flag given on the command line wins."""

    def default(name: str) -> str:
        return f"default: the model's encoding.json, else {getattr(_DEFAULTS, name)}"

    parser.add_argument(
        "--wrapper",
        choices=("sft", "pretrain"),
        default=None,
        help=f'text template for rows without a "wrapper" field ({default("wrapper")})',
    )
    parser.add_argument("--max-length", type=int, default=None, help=f"tokens per sequence ({default('max_length')})")
    parser.add_argument(
        "--max-response-length",
        type=int,
        default=None,
        help=f"tokens kept of the reference and of the output ({default('max_response_length')})",
    )
    parser.add_argument(
        "--response-cut-side",
        choices=("right", "left"),
        default=None,
        help=f"which end of a long response is kept ({default('response_cut_side')})",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (default: float32)"
    )


ENCODING_FLAGS = ("max_length", "max_response_length", "response_cut_side", "wrapper")


def encoding_config_from_args(args: argparse.Namespace, model_dir: str | None = None) -> encoding.EncodingConfig:
    """The model directory's saved encoding (else the client's defaults) with the flags given on top."""
    saved = encoding.read_encoding_file(model_dir) if model_dir and os.path.isdir(model_dir) else None
    base = encoding.EncodingConfig.from_dict(saved["encoding"]) if saved else _DEFAULTS
    given = {k: getattr(args, k) for k in ENCODING_FLAGS if getattr(args, k, None) is not None}
    cfg = dataclasses.replace(base, **given)
    log.debug("encoding %s", cfg.to_dict())
    log.info(
        "encoding: %s%s",
        f"{model_dir}/{encoding.ENCODING_FILE}" if saved else "the official client's defaults",
        " with --" + ", --".join(k.replace("_", "-") for k in given) if given else "",
    )
    return cfg


def run(args: argparse.Namespace) -> int:
    """Check the paths, read and validate rows, score them, write them with their rewards (atomically).
    Several processes: each scores its share, process 0 writes the file (the module docstring)."""
    processes.join(args)
    output = paths.check_output_file(args.output)  # before any work: not after scoring every row
    files = paths.expand_inputs(args.input)
    paths.check_not_empty(files)
    models.check_heads(args.model, "reward", "score")
    enc_cfg = encoding_config_from_args(args, args.model)
    report = schema.SkipReport()
    rows = [r.data for f in files for r in schema.read_jsonl(f, "score", args.skip_invalid, report)]  # bad: exit 2
    if not rows:
        raise paths.no_rows_error(files, "score")
    tokenizer = tokenizers.load_tokenizer(args.tokenizer or args.model, args.trust_remote_code)
    model = models.load_model(args.model, dtype=args.dtype)
    rewards = scoring.score_rows(
        model,
        tokenizer,
        rows,
        enc_cfg,
        batch_size=args.batch_size,
        shared_prefix=not args.no_shared_prefix,
        across_processes=True,
    )
    if jax.process_index() != 0:  # every process holds every reward; one writes them
        return 0
    with paths.atomic_lines(output) as f:  # the old file or the complete new one, never a part
        for row, reward in zip(rows, rewards):
            f.write(json.dumps({**row, "reward": float(reward)}, ensure_ascii=False) + "\n")
    if report.invalid:
        log.warning("skipped %d invalid rows: %s", report.invalid, report.summary())
    log.info("scored %d rows -> %s", len(rows), args.output)
    return 0
