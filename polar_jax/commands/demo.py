"""The whole POLAR idea on a laptop CPU, no network: train small LMs, pool them with
SmolLM2-135M-Instruct, synthesise triplets, pre-train a reward model, evaluate it on held-out
prompts and held-out policies. A rerun resumes instead of recomputing.

    python -m polar_jax demo --workdir runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from polar_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `demo`."""
    parser.add_argument("--workdir", default="runs/demo", help="where every stage writes (a rerun resumes)")
    parser.add_argument(
        "--recipe",
        choices=("default", "paper"),
        default="default",
        help="default: the few-minute demo; paper: the paper's recipe at demo scale (a larger pool, the reward "
        "model from a base LM, longer responses; ~9 min on 2 CPU cores). --set changes apply on top",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a DemoConfig field (JSON value), e.g. --set rm_steps=100 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from polar_jax import demo

    changes = {}
    fields = {f.name for f in dataclasses.fields(demo.DemoConfig)}
    for item in args.set:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(
                f'--set {item!r}: VALUE must be JSON (a number, true/false, "a string", [a, list]): {e}'
            ) from e
        changes[name] = tuple(value) if isinstance(value, list) else value
    cfg = dataclasses.replace(demo.RECIPES[args.recipe], **changes)
    results = demo.run_demo(args.workdir, cfg, progress=not args.no_progress)
    print(demo.format_results(results))
    return 0
