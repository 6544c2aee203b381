"""`python -m polar_jax <command>` (also installed as `polar-jax`): the one door to the library."""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import logging
import os
import shutil
import sys
import traceback

from polar_jax import errors

# command name -> (module under polar_jax.commands, one-line help)
COMMANDS = {
    "convert": ("convert", "convert a model between HF safetensors, GGUF (read) and polar_jax formats"),
    "generate": (
        "generate",
        "continue prompts with a causal LM (SmolLM2 by default): greedy, or temperature / top-k / top-p",
    ),
    "prepare": ("prepare", "tokenise JSONL triplets into ArrayRecord shards in the official POLAR encoding"),
    "score": ("score", "score {prompt, reference, output} rows with a POLAR reward model (official encoding)"),
    "serve": (
        "serve",
        "serve a reward model over HTTP to the official POLAR client, verl, OpenRLHF (sglang/vLLM APIs)",
    ),
    "train": ("train", "pre-train or fine-tune a POLAR reward model from a config file (resumable)"),
    "synth": ("synth", "sample policy-discrimination triplets from a policy pool (resumable, with provenance)"),
    "evaluate": ("evaluate", "pair accuracy of a reward model on triplets, split by seen / unseen policies"),
    "rft": ("rft", "train a policy with PPO (or a group baseline) on POLAR rewards against references (resumable)"),
    "demo": ("demo", "the whole idea on a laptop: pool, synthesis, pre-training, evaluation (resumable)"),
    "scaling": ("scaling", "sweep reward-model size and compute, fit power laws, plot them"),
    "compile": ("compile", "compile a config's step ahead of time for a TPU topology; report memory and FLOPs"),
}

CONFIG_COMMANDS = {"train", "synth", "scaling", "compile", "rft"}
CONFIG_USAGE = "[--config.KEY=VALUE ...]"
CONFIG_EXAMPLES = {
    "train": "--config.steps=200 --config.optim.lr=3e-4",
    "rft": "--config.iterations=50",
    "synth": "--config.num_triplets=128",
    "scaling": "--config.train.optim.lr=1e-3",
    "compile": "--config.mesh.fsdp=-1",
}
CONFIG_EPILOG = """config overrides:
  --config.KEY=VALUE, or --config.KEY VALUE (repeatable), e.g. {example}
  KEY is a dotted path into the config; VALUE is parsed like Python. Every key's type and
  range is checked before any work starts."""
# User errors print one line and exit 2 (the traceback only with -v); anything else is a bug and keeps it.
USER_OS_ERRORS = (OSError,)  # a missing, unreadable or misplaced file (or a full disk): the message names it
USER_VALUE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)  # bad input files, wherever they are read


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their examples as written; every flag's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" in help_text
            or "(default" in help_text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default in ("", [], ())
            or action.required
        ):
            return help_text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{help_text} (default: {str(shown).replace('%', '%%')})".lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`polar-jax CMD: error: ...`, exit 2) and our help format."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line on stderr, exit status 2 (argparse's own prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def is_user_error(e: BaseException) -> bool:
    """Whether `e` is a mistake the user can fix from its message (UserError, a missing or unreadable
    file, a bad input file, or a ValueError raised by polar_jax's own code or a config file)."""
    if isinstance(e, (errors.UserError, USER_OS_ERRORS, USER_VALUE_ERRORS)):
        return True
    if isinstance(e, ValueError):  # raised on purpose by our code (its messages say what to change)
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb is not None else ""
        if filename.startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep):
            return True
        installed = any(filename.startswith(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
        return not installed and os.path.exists(filename)  # a config file's get_config()
    return False


def error_line(e: BaseException) -> str:
    """The exception's message as one line."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    elif isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    else:
        text = str(e) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def join_config_values(argv: list[str]) -> list[str]:
    """`--config.KEY VALUE` (a space, as other flags take) becomes `--config.KEY=VALUE`."""
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--config.") and "=" not in item and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{item}={argv[i + 1]}")
            i += 2
        else:
            out.append(item)
            i += 1
    return out


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


# The commands whose --workdir may be a bucket (`io.storage`); every other gs:// path is refused before
# any work, rather than read as a local directory named "gs:".
BUCKET_WORKDIRS = ("train", "rft")


def refuse_bucket_paths(args: argparse.Namespace, command_parser: argparse.ArgumentParser) -> None:
    """A one-line argparse error (exit 2) for a gs:// value where the command takes local paths only."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        bucket = next((v for v in values if isinstance(v, str) and v.startswith("gs://")), None)
        if bucket is None or (dest == "workdir" and args.command in BUCKET_WORKDIRS):
            continue
        flag = "--" + dest.replace("_", "-")
        command_parser.error(
            f"{flag} {bucket}: {args.command} reads and writes local paths only (a bucket is a "
            f"--workdir of {' and '.join(BUCKET_WORKDIRS)}); mount the bucket with gcsfuse and give its path"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code (2: a user error)."""
    _quiet_cpu_only_host()
    # transformers prints "PyTorch was not found..." at import (an advisory warning): we need only its tokenizers.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    argv = join_config_values(sys.argv[1:] if argv is None else list(argv))
    parser = ArgumentParser(prog="polar-jax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen command's module is imported (they pull in different libraries).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = command_parser = None
    for name, (module_name, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"polar_jax.commands.{module_name}")
        command_parser = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            epilog=CONFIG_EPILOG.format(example=CONFIG_EXAMPLES[name]) if name in CONFIG_COMMANDS else None,
        )
        module.add_arguments(command_parser)
        command_parser.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging; tracebacks of errors",
        )
        if name in CONFIG_COMMANDS:
            usage = command_parser.format_usage().removeprefix("usage: ").rstrip("\n")
            command_parser.usage = f"{usage} {CONFIG_USAGE}".replace(command_parser.prog, "%(prog)s", 1)
    try:
        args, extra = parser.parse_known_args(argv)
        # Commands that read a config file take --config.KEY=VALUE overrides; anything else unknown is an error.
        args.overrides = [a for a in extra if a.startswith("--config.")]
        unknown = [a for a in extra if a not in args.overrides]
        if unknown or (args.overrides and args.command not in CONFIG_COMMANDS):
            command_parser.error(
                f"unrecognized arguments: {' '.join(unknown or args.overrides)}"
                + ("" if unknown else f" ({args.command} reads no config)")
            )
        refuse_bucket_paths(args, command_parser)
    except SystemExit as e:  # --help (0) or a one-line argparse error (2)
        return e.code if isinstance(e.code, int) else 2
    # Our messages at INFO, other libraries' (orbax, absl, grain) at WARNING; -v shows all.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # imported libraries may have configured the root logger already
    )
    logging.getLogger("polar_jax").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return module.run(args)
    except Exception as e:
        if not is_user_error(e):
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"polar-jax {args.command}: error: {error_line(e)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
