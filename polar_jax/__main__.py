"""`python -m polar_jax <command>` (also installed as `polar-jax`): the one door to the library."""

from __future__ import annotations

import argparse
import glob
import importlib
import logging
import os
import shutil
import sys

# command name -> (module under polar_jax.commands, one-line help)
COMMANDS = {
    "convert": ("convert", "convert a model between HF safetensors, GGUF (read) and polar_jax formats"),
    "generate": ("generate", "continue prompts with a causal LM (SmolLM2 by default): greedy, or temperature / top-k / top-p"),
    "prepare": ("prepare", "tokenise JSONL triplets into ArrayRecord shards in the official POLAR encoding"),
    "score": ("score", "score {prompt, reference, output} rows with a POLAR reward model (official encoding)"),
    "train": ("train", "pre-train or fine-tune a POLAR reward model from a config file (resumable)"),
    "synth": ("synth", "sample policy-discrimination triplets from a policy pool (resumable, with provenance)"),
    "evaluate": ("evaluate", "pair accuracy of a reward model on triplets, split by seen / unseen policies"),
    "rft": ("rft", "train a policy with PPO (or a group baseline) on POLAR rewards against references (resumable)"),
    "demo": ("demo", "the whole idea on a laptop: pool, synthesis, pre-training, evaluation (resumable)"),
    "scaling": ("scaling", "sweep reward-model size and compute, fit power laws, plot them"),
    "compile": ("compile", "compile a config's step ahead of time for a TPU topology; report memory and FLOPs"),
}

CONFIG_COMMANDS = {"train", "synth", "scaling", "compile", "rft"}


def _quiet_cpu_only_host() -> None:
    """With libtpu installed (`setup.sh --tpu`, as CI does) JAX probes for a TPU at start-up and
    prints pages of warnings on a machine without one. Where no TPU (/dev/accel*, /dev/vfio/N)
    and no NVIDIA GPU is present, and the user has not chosen, run on the CPU directly."""
    if "JAX_PLATFORMS" in os.environ:
        return
    tpu = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")
    if not tpu and not gpu:
        os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code."""
    _quiet_cpu_only_host()
    parser = argparse.ArgumentParser(prog="polar-jax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the chosen command's module is imported (they pull in different libraries).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        if name == chosen:
            module = importlib.import_module(f"polar_jax.commands.{module_name}")
            module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
        else:
            sub.add_parser(name, help=help_text)
    args, extra = parser.parse_known_args(argv)
    # Commands that read a config file take --config.KEY=VALUE overrides; anything else unknown is an error.
    args.overrides = [a for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if a not in args.overrides]
    if unknown or (args.overrides and args.command not in CONFIG_COMMANDS):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    # Our messages at INFO, other libraries' (orbax, absl, grain) at WARNING; -v shows all.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # imported libraries may have configured the root logger already
    )
    logging.getLogger("polar_jax").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
