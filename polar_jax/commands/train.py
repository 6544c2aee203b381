"""Pre-train or fine-tune a POLAR reward model from a config file; rerun to resume.

    python -m polar_jax train --config configs/pretrain_tiny.py --workdir DIR [--config.KEY=VALUE ...]

Where it lives: `train/trainer.py` wires the run (`train`); `train/loop.py` is the run loop
(checkpoints, metrics, signals, divergence); `train/setup.py` turns the config into the model,
data, optimiser and jitted steps; `train/step.py` holds the pure steps.
"""

from __future__ import annotations

import argparse
import logging

from polar_jax.commands import processes
from polar_jax.config_loading import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `train` (config overrides come as extra --config.KEY=VALUE arguments)."""
    parser.add_argument(
        "--config", required=True, help="configs/NAME.py (optionally NAME.py:ARG: ARG goes to its get_config)"
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="the run's directory: checkpoints, metrics.jsonl, TensorBoard, config.json, model/ (a rerun resumes)",
    )
    processes.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Load the config, join the other processes if any, train."""
    config = load_config(args.config, args.overrides, check="train")
    processes.join(args)
    from polar_jax.train import loop, trainer  # after distributed init: it touches devices

    try:
        result = trainer.train(config, args.workdir, progress=not args.no_progress)
    except loop.TrainingDiverged as e:
        log.error("%s", e)
        return 3
    log.info("stopped at step %d (%s); workdir %s", result.step, result.stopped_by, args.workdir)
    return 0
