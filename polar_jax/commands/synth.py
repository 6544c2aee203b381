"""Sample policy-discrimination triplets from a policy pool into JSONL shards; rerun to resume.

    python -m polar_jax synth --config configs/synth_smollm2.py --output DIR [--config.KEY=VALUE ...]

For each prompt, policies A != B are drawn; A writes the reference and the chosen, B the
rejected. Rows are the official {prompt, reference, chosen, rejected} format, with the
policies, seeds and sampling settings in `meta`. `prepare` tokenises them for training.

Where it lives: `synth/synthesize.py` is the shard loop (plan, resume, atomic shards);
`synth/from_config.py` turns the config into the pool and prompts; `synth/pool.py` samples
with `sampling.generate`.

On several processes (--coordinator HOST:PORT --num-processes N --process-id I on each, or
--multihost; `commands.processes`), all writing one --output directory that every process sees:
process i writes shards i, i + N, i + 2N, ... on its own devices, process 0 the directory's
synth.json, run.json and (after all shards exist) summary.json. The shard files are the same,
byte for byte, as one process writes; a rerun on any number of processes resumes.
"""

from __future__ import annotations

import argparse
import logging

from polar_jax.commands import processes
from polar_jax.config_loading import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `synth` (config overrides come as extra --config.KEY=VALUE arguments)."""
    parser.add_argument("--config", required=True, help="configs/synth_NAME.py")
    parser.add_argument(
        "--output",
        "--out",
        dest="output",
        required=True,
        metavar="DIR",
        help="directory for triplets-*.jsonl (a rerun resumes); --out is the old spelling",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    processes.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the pool, prompts and plan from the config; join the other processes if any; synthesise."""
    config = load_config(args.config, args.overrides, check="synth")
    processes.join(args)
    import jax

    from polar_jax.synth import from_config, synthesize  # after distributed init: they touch devices

    pool, prompts, plan = from_config.build(config)
    summary = synthesize.synthesize(pool, prompts, plan, args.output, progress=not args.no_progress)
    if jax.process_index() != 0:
        return 0
    log.info(
        "%d triplets in %s (%d dropped for an empty response, %d responses cut at a repetition loop); "
        "%d new tokens in %.1fs this run",
        summary["triplets"],
        args.output,
        summary["empty_response"],
        summary["loop_truncated"],
        summary["new_tokens"],
        summary["seconds_this_run"],
    )
    return 0
