"""Compile a config's step ahead of time for a TPU slice, on a machine without TPUs, and say
whether it fits: per-chip memory against HBM, FLOPs per step, collectives.

    python -m polar_jax compile --config configs/polar_7b.py --topology v5p:4x4x4 [--stage train|sample|engine|rft]
        [--config.mesh.fsdp=-1 ...] [--json report.json]

Needs libtpu (`launch/setup.sh --tpu`). No weights are loaded and no data read: model sizes,
batch and mesh come from the config. TOPOLOGY is GEN:AxB[xC] (v5p:4x4x4, v5e:16x16,
v6e:16x16, v4:2x2x2) or a Cloud accelerator type (v5p-128, v5litepod-256, v6e-256).
`--stage rft` takes an RFT config (configs/rft_*.py) and compiles its PPO update (actor and
critic states, gradients and AdamW moments, one rollout batch) and the iteration's other
programs (rollout prefill and decode through the engine at the config's lengths, the reward
model's scoring, experience making; `--update-only` skips them), reporting each phase's per-chip
memory with what stays resident beside it; the peak phase decides the fit. The model shapes come
from the config.json / metadata of policy.init and reward.model, not from their weights.
Exit status: 0 fits, 1 does not fit, 2 nothing compiled (bad arguments, libtpu missing, a
config that is not the stage's, a missing model file).

Where it lives: `aot/compile.py` drives one compile (topology -> mesh -> lowering -> report);
`aot/train_stage.py`, `sample_stage.py`, `engine_stage.py` and `rft_stage.py` lower each stage over the abstract
inputs its set-up gives (`train/setup.py`, `rft/setup.py`); `aot/topology.py`, `aot/report.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib

from polar_jax import aot
from polar_jax.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `compile` (config overrides come as extra --config.KEY=VALUE arguments)."""
    parser.add_argument(
        "--config", required=True, help="configs/NAME.py (optionally NAME.py:ARG: ARG goes to its get_config)"
    )
    parser.add_argument("--topology", required=True, help="v5p:4x4x4, v5e:16x16, v6e:8x8, v5p-128, v5litepod-256, ...")
    parser.add_argument(
        "--stage",
        choices=aot.STAGES,
        default="train",
        help="train: the trainer's update step; sample: the KV-cache sampler of the "
        "config's model as a causal LM; engine: one decode call of the continuous-batching engine "
        "(--sample-batch slots); rft: an RFT config's iteration (configs/rft_*.py): rollout prefill "
        "and decode, scoring, experience and the PPO update, shapes from the models' config.json",
    )
    parser.add_argument(
        "--sample-batch",
        type=int,
        default=None,
        help="sample: prompts per call; engine: slots (default: the config's data.batch_size)",
    )
    parser.add_argument("--prompt-len", type=int, default=1024, help="sample: prompt tokens (POLAR: up to 1024)")
    parser.add_argument("--max-new-tokens", type=int, default=4096, help="sample: new tokens (POLAR: 4096)")
    parser.add_argument(
        "--update-only",
        action="store_true",
        help="rft: compile the PPO update alone, not rollout, scoring and experience (the fit is then the update's)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to this file")
    parser.add_argument("--hlo", default=None, metavar="FILE", help="also write the compiled HLO text to this file")


def run(args: argparse.Namespace) -> int:
    """Compile and print the report; 0 fits, 1 does not, 2 nothing compiled."""
    aot.prepare_environment()  # before anything initialises a JAX backend
    from polar_jax import config_checks
    from polar_jax.config_loading import load_config

    config = load_config(args.config, args.overrides)
    kind = "rft" if args.stage == "rft" else "train"
    if (kind == "rft") == ("iterations" in config):  # else the wrong kind: compile_step says so
        config_checks.check(config, kind, source=args.config, overrides=args.overrides)
    try:
        report = aot.compile_step(
            config,
            args.topology,
            args.stage,
            config_name=args.config,
            sample_batch=args.sample_batch,
            prompt_len=args.prompt_len,
            max_new_tokens=args.max_new_tokens,
            hlo_path=args.hlo,
            phases=not args.update_only,
        )
    except (aot.LibtpuMissing, aot.StageUnavailable) as e:
        raise UserError(str(e)) from e
    print(report.format(), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.fits else 1
