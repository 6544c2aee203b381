"""Convert a model: --from an HF directory, a .gguf file or a polar_jax directory, --to a
new directory in HF safetensors (loadable by transformers) or polar_jax (Orbax) format.
The tokenizer files travel with the weights."""

from __future__ import annotations

import argparse
import logging

from polar_jax.io import models

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `convert`."""
    parser.add_argument("--from", dest="src", required=True, help="HF directory, .gguf file or polar_jax directory")
    parser.add_argument("--to", dest="dst", required=True, help="output directory")
    parser.add_argument("--format", choices=("hf", "polar"), required=True, help="output format")
    parser.add_argument("--head", choices=("lm", "reward"), default=None,
                        help="HF architecture to write (default: reward if the model has a reward head, else lm)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="tensor dtype of an HF export")


def run(args: argparse.Namespace) -> int:
    """Run the conversion and say what was written."""
    model = models.convert(args.src, args.dst, args.format, head=args.head, dtype=args.dtype)
    log.info(
        "wrote %s (%s, family %s, heads %s, %.1fM parameters) to %s",
        args.src, args.format, model.family, ",".join(model.cfg.heads), model.cfg.num_params() / 1e6, args.dst,
    )
    return 0
