"""Train a policy with PPO (or the group baseline) on POLAR rewards against references; rerun to resume.

    python -m polar_jax rft --config configs/rft_demo.py --workdir DIR [--config.KEY=VALUE ...]

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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Load the config and train (or resume)."""
    config = load_config(args.config, args.overrides, check="rft")
    from polar_jax.rft import trainer  # after parsing: importing touches JAX
    from polar_jax.train import loop

    try:
        result = trainer.train(config, args.workdir, progress=not args.no_progress)
    except loop.TrainingDiverged as e:
        log.error("%s", e)
        return 3
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
