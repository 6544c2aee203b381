"""Convert a model: --model an HF directory, a .gguf file or a polar_jax directory, --output a
new directory in HF safetensors (loadable by transformers) or polar_jax (Orbax) format.
The tokenizer files travel with the weights.

    python -m polar_jax convert --model SRC --output DST --format hf|polar [--head lm|reward]
"""

from __future__ import annotations

import argparse
import logging

from polar_jax.io import models

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `convert`."""
    parser.add_argument(
        "--model",
        "--input",
        "--from",
        dest="src",
        required=True,
        metavar="SRC",
        help="HF directory, .gguf file or polar_jax directory (--from: the old spelling)",
    )
    parser.add_argument(
        "--output", "--to", dest="dst", required=True, metavar="DIR", help="output directory (--to: the old spelling)"
    )
    parser.add_argument("--format", choices=("hf", "polar"), required=True, help="output format")
    parser.add_argument(
        "--head",
        choices=("lm", "reward"),
        default=None,
        help="HF architecture to write (default: reward if the model has a reward head, else lm)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="tensor dtype of an HF export"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run a checkpoint's own tokenizer code (InternLM2); read it first",
    )


def run(args: argparse.Namespace) -> int:
    """Run the conversion and say what was written."""
    model = models.convert(
        args.src, args.dst, args.format, head=args.head, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    log.info(
        "wrote %s (%s, family %s, heads %s, %.1fM parameters) to %s",
        args.src,
        args.format,
        model.family,
        ",".join(model.cfg.heads),
        model.cfg.num_params() / 1e6,
        args.dst,
    )
    return 0
