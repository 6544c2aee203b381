"""Train a policy with PPO (or the group baseline) on POLAR rewards against references; rerun to resume.

    python -m polar_jax rft --config configs/rft_demo.py --workdir DIR [--config.KEY=VALUE ...]

Several processes (--coordinator / --num-processes / --process-id, or --multihost on a TPU pod
slice / Slurm; the same command on each): each samples its share of an iteration's rollouts on
its own devices, the scoring splits over them, the update runs on the mesh over all devices;
process 0 writes the outputs, the checkpoints are shared (DIR on a filesystem every process sees),
and a SIGTERM to any one process stops every process after the same iteration.

Writes DIR/metrics.jsonl (+ TensorBoard), DIR/checkpoints, DIR/policy (the trained policy as
an HF directory) and, with held-out data, DIR/rft_results.json (reward and target
log-likelihood of held-out responses, greedy by default, before and after training).

Where it lives: `rft/trainer.py` wires the run (`train`) and one iteration (`Runner.iteration`);
`train/loop.py` is the run loop every trainer uses; `rft/setup.py` turns the config into the
models and the run's `Plan`; `rft/step.py` holds the pure steps (experience, PPO update).
"""

from __future__ import annotations

import argparse
import json
import logging

from polar_jax.commands import processes
from polar_jax.config_loading import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `rft` (config overrides come as extra --config.KEY=VALUE arguments)."""
    parser.add_argument(
        "--config", required=True, help="configs/NAME.py (optionally NAME.py:ARG: ARG goes to its get_config)"
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="the run's directory: checkpoints, metrics.jsonl, TensorBoard, policy/, rft_results.json (a rerun resumes)",
    )
    processes.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Load the config, join the other processes if any, train (or resume)."""
    config = load_config(args.config, args.overrides, check="rft")
    processes.join(args)
    from polar_jax.rft import trainer  # after distributed init: importing touches JAX
    from polar_jax.train import loop

    try:
        result = trainer.train(config, args.workdir, progress=not args.no_progress)
    except loop.TrainingDiverged as e:
        log.error("%s", e)
        return 3
    import jax

    if jax.process_count() > 1:  # each process says where it stopped (they agree)
        log.info("process %d: stopped at iteration %d (%s)", jax.process_index(), result.step, result.stopped_by)
        if jax.process_index() != 0:
            return 0
    log.info("stopped at iteration %d (%s); workdir %s", result.step, result.stopped_by, args.workdir)
    if result.results:
        print(json.dumps(result.results, indent=1))
        r = result.results
        if "target_samples_reward" in r:  # the reward-gaming check, side by side
            print(
                f"reward-gaming check (held out): policy reward {r['reward_before']:.2f} -> {r['reward_after']:.2f}, "
                f"the target's own samples {r['target_samples_reward']:.2f}; target log-likelihood "
                f"{r['target_loglik_before']:.2f} -> {r['target_loglik_after']:.2f}, "
                f"of its own samples {r['target_samples_loglik']:.2f}"
            )
    return 0
