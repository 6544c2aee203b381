"""Pair accuracy of a POLAR reward model on triplet JSONL files {prompt, reference, chosen,
rejected[, meta]}: how often r(prompt, reference, chosen) > r(prompt, reference, rejected)
(ties count 0.5, chance is 0.5), overall, by seen / unseen policies and by meta.category.

    python -m polar_jax evaluate --model DIR --input test.jsonl [--train-data train_dir] [--output results.json]

--input and --train-data take files or directories (all their *.jsonl files, sorted; a file named
twice is read once; an empty file is an error). --seen-policies names must be policies of the data. The seen
policies come from --seen-policies a,b,c or from the policy names in the --train-data files'
meta. The paper's preference accuracy is the same computation on a file whose reference is
the top-ranked response, chosen rank 2 and rejected rank 3. Bad rows stop the run at
FILE:LINE unless --skip-invalid is given (then they are counted and reported).

On several processes (--coordinator HOST:PORT --num-processes N --process-id I on each, or
--multihost; `commands.processes`) the scoring batches are shared as in `score` (batch k on
process k % N, process-local), every process gets every reward, and process 0 prints the table
and writes --output: the accuracies are over all rows, the same file as one process writes.
"""

from __future__ import annotations

import argparse
import json
import logging

import jax

from polar_jax import evaluate
from polar_jax.commands import processes, score
from polar_jax.data import schema
from polar_jax.errors import UserError
from polar_jax.io import atomic, models, paths, tokenizers

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `evaluate`."""
    parser.add_argument("--model", required=True, metavar="DIR", help="reward model: HF directory, polar_jax directory")
    parser.add_argument(
        "--input",
        "--data",
        dest="data",
        required=True,
        nargs="+",
        metavar="FILE_OR_DIR",
        help="triplet JSONL files, or directories of *.jsonl shards (--data: the old spelling)",
    )
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument(
        "--seen-policies",
        default=None,
        metavar="A,B,C",
        help="comma-separated policy names seen in training (splits seen / unseen)",
    )
    seen.add_argument(
        "--train-data",
        nargs="+",
        default=None,
        metavar="FILE_OR_DIR",
        help="training triplets: the policy names in their meta are the seen set",
    )
    parser.add_argument("--output", default=None, metavar="FILE.json", help="write the results as JSON")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory or .gguf (default: the model's)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run a checkpoint's own tokenizer code (InternLM2); read it first",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows scored per forward pass")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.add_encoding_arguments(parser)
    processes.add_arguments(parser)


def _checked_seen_names(names: set[str], rows: list[dict]) -> set[str]:
    """--seen-policies names, each of which must name a policy of the evaluated rows (else a typo
    would silently move rows from seen to unseen)."""
    known = set().union(*(evaluate.row_policies(row) for row in rows)) if rows else set()
    unknown = sorted(names - known)
    if unknown:
        raise UserError(
            f"--seen-policies {', '.join(unknown)}: no such policy in the data's meta "
            f"({', '.join(evaluate.POLICY_KEYS)}); its policies are: {', '.join(sorted(known)) or 'none'}"
        )
    return names


def _seen_policies(args: argparse.Namespace, rows: list[dict]) -> set[str] | None:
    """The seen set from --seen-policies (checked against the rows' policies) or --train-data; None when neither."""
    if args.seen_policies is not None:
        names = {name.strip() for name in args.seen_policies.split(",") if name.strip()}
        if not names:
            raise UserError("--seen-policies names no policy; give comma-separated names")
        return _checked_seen_names(names, rows)
    if args.train_data is None:
        return None
    train_files = evaluate.expand_paths(args.train_data, "--train-data")
    paths.check_not_empty(train_files, "--train-data")
    report = schema.SkipReport()
    names = evaluate.policies_in(train_files, args.skip_invalid, report)
    if report.invalid:
        log.warning(
            "skipped %d invalid training rows while collecting policy names:\n%s", report.invalid, report.summary()
        )
    if not names:
        raise UserError(
            f"--train-data {' '.join(args.train_data)}: no row names a policy in meta "
            f"({', '.join(evaluate.POLICY_KEYS)}); give --seen-policies instead"
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Read the triplets, score both candidates of each, print (and write, atomically) the accuracy table.
    Several processes: each scores its share, process 0 prints and writes (the module docstring)."""
    processes.join(args)
    if args.output:
        paths.check_output_file(args.output)  # before any work: not after printing the table
    files = evaluate.expand_paths(args.data)  # a missing file, a bad row or a bad flag: one line, exit 2
    paths.check_not_empty(files)
    models.check_heads(args.model, "reward", "evaluate")
    enc_cfg = score.encoding_config_from_args(args, args.model)
    report = schema.SkipReport()
    rows = evaluate.read_triplets(files, args.skip_invalid, report)
    if not rows:
        raise paths.no_rows_error(files, "triplet")
    seen = _seen_policies(args, rows)
    if report.invalid:
        log.warning("skipped %d invalid rows:\n%s", report.invalid, report.summary())
    tokenizer = tokenizers.load_tokenizer(args.tokenizer or args.model, args.trust_remote_code)
    model = models.load_model(args.model, dtype=args.dtype)
    results = evaluate.evaluate_triplets(
        model,
        tokenizer,
        rows,
        enc_cfg,
        seen_policies=seen,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        across_processes=True,
    )
    if jax.process_index() != 0:  # every process holds every result; one prints and writes them
        return 0
    print(evaluate.format_table(results))
    if args.output:
        out = {
            "groups": results,
            "model": str(args.model),
            "data": [str(f) for f in files],
            "seen_policies": sorted(seen) if seen is not None else None,
            "skipped": report.to_dict(),
            "encoding": enc_cfg.to_dict(),
        }
        atomic.write_text(args.output, json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        log.info("wrote %s", args.output)
    return 0
