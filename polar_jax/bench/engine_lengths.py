"""Static batches vs the continuous-batching engine on a long-tailed length distribution.

    python -m polar_jax.bench.sampling --engine                          # slots 8 and 32, CPU
    python -m polar_jax.bench.sampling --engine --slots 16 --requests 512 --cap 4096

R requests: prompts of random lengths (uniform in --min-prompt..--max-prompt tokens) and
per-request token budgets drawn log-normal (--median, --sigma) and clipped to [1, --cap], POLAR's
sampling (T 1.0, top-k 50, top-p 0.9), no stop ids and no loop rule. The budgets stand in for
EOS: the model is the demo's policy-LM shape (`DemoLMSpec`) with RANDOM weights, which give no
meaningful EOS, so each request ends at its budget, as a trajectory ends at its EOS.

- static: consecutive batches of B = slots requests through `sampling.generate` (prompts padded
  to the engine's width bucket of the batch's longest prompt, budgets as `max_new_b`); a batch
  decodes until its longest row ends, the waste being measured. "prefill s" is the sum of
  one-token runs of the same batches (prefill + one decode step); "decode s" the rest.
- engine: `Engine(slots=B)` on the same requests with the same per-request keys.

Compile is excluded: every static batch shape runs once before it is timed, and the engine's
whole workload runs once on a warm-up engine before a fresh engine is timed. utilisation =
useful tokens / slot-steps (static: sum of lengths / (B x longest length), over batches).
The run checks that the engine's tokens equal the static run's for every request.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import os
import time

import jax
import numpy as np

from polar_jax import sampling
from polar_jax.bench.common import print_table
from polar_jax.engine import Engine, width_buckets
from polar_jax.models import transformer as T
from polar_jax.synth.demo_lms import DemoLMSpec

DEMO_VOCAB = 2048  # the demo's tokenizer vocabulary (DemoConfig.tokenizer_vocab)


@dataclasses.dataclass(frozen=True)
class Workload:
    """R requests: prompts (token-id arrays), budgets_r [R] int32, keys_r [R] (typed keys)."""

    prompts: list[np.ndarray]
    budgets_r: np.ndarray
    keys_r: jax.Array


@dataclasses.dataclass
class RunResult:
    """One mode's outputs and counters."""

    gen: sampling.Generation  # numpy [R, N], request order
    useful_tokens: int
    slot_steps: int
    seconds: float
    prefill_s: float
    decode_s: float
    calls: str = ""  # how many compiled calls the run made


def make_workload(
    num: int, min_prompt: int, max_prompt: int, median: float, sigma: float, cap: int, vocab: int, seed: int = 0
) -> Workload:
    """Random prompts and log-normal budgets (median `median`, log-sd `sigma`, clipped to [1, cap])."""
    rng = np.random.default_rng(seed)
    prompt_lengths_r = rng.integers(min_prompt, max_prompt + 1, num)
    prompts = [rng.integers(1, vocab, n).astype(np.int32) for n in prompt_lengths_r]
    budgets_r = np.clip(np.rint(rng.lognormal(np.log(median), sigma, num)), 1, cap).astype(np.int32)
    keys_r = sampling.row_keys(jax.random.key(seed + 1), num)
    return Workload(prompts, budgets_r, keys_r)


def pad_batch(prompts: list[np.ndarray], widths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_bt right-padded to the smallest width bucket that fits, lengths_b)."""
    lengths_b = np.array([len(p) for p in prompts], np.int32)
    width = next(w for w in widths if w >= lengths_b.max())
    prompt_bt = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        prompt_bt[row, : len(ids)] = ids
    return prompt_bt, lengths_b


def _timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def run_static(cfg, params, work: Workload, config: sampling.SamplingConfig, batch: int, max_prompt: int) -> RunResult:
    """Consecutive batches of `batch` requests through `sampling.generate` (each shape compiled first)."""
    widths, num = width_buckets(max_prompt), len(work.prompts)
    parts, seconds, prefill_s, slot_steps = [], 0.0, 0.0, 0
    for lo in range(0, num, batch):
        rows = slice(lo, min(lo + batch, num))
        prompt_bt, lengths_b = pad_batch(work.prompts[rows], widths)
        keys_b, budgets_b = work.keys_r[rows], work.budgets_r[rows]
        ones_b = np.ones_like(budgets_b)
        call = lambda budgets: sampling.generate(cfg, params, prompt_bt, lengths_b, config, keys_b, budgets)  # noqa: E731
        jax.block_until_ready(call(ones_b))  # compiles this (batch, width) shape
        prefill_s += _timed(call, ones_b)[0]
        took, gen = _timed(call, budgets_b)
        seconds += took
        parts.append(jax.device_get(gen))
        slot_steps += len(budgets_b) * int(gen.lengths_b.max())
    gen = sampling.Generation(*(np.concatenate(cols) for cols in zip(*parts)))
    calls = f"{len(parts)} generate"
    useful = int(gen.lengths_b.sum())
    return RunResult(gen, useful, slot_steps, seconds, prefill_s, seconds - prefill_s, calls)


def run_engine(cfg, params, work: Workload, config: sampling.SamplingConfig, slots: int, max_prompt: int) -> RunResult:
    """The engine on the whole workload, after a warm-up engine ran it once (compiles every bucket)."""
    prompts = [p.tolist() for p in work.prompts]
    Engine(cfg, config, slots=slots, max_prompt_tokens=max_prompt).generate(
        params, prompts, work.keys_r, work.budgets_r
    )
    engine = Engine(cfg, config, slots=slots, max_prompt_tokens=max_prompt)
    seconds, gen = _timed(engine.generate, params, prompts, work.keys_r, work.budgets_r)
    st = engine.stats
    calls = f"{st.prefill_calls} prefill, {st.decode_calls} decode"
    return RunResult(gen, st.useful_tokens, st.slot_steps, seconds, st.prefill_s, st.decode_s, calls)


def fifo_slot_steps(budgets_r: np.ndarray, slots: int) -> int:
    """Slot-steps of ideal list scheduling in arrival order (a request enters the first slot to free
    up, and every step decodes all slots until the last request ends): the engine's floor."""
    free_at = [0] * slots
    for budget in budgets_r.tolist():
        heapq.heappush(free_at, heapq.heappop(free_at) + budget)
    return slots * max(free_at)


def same_outputs(a: sampling.Generation, b: sampling.Generation) -> bool:
    """Every request's tokens and lengths equal (log-probs to float32 rounding)."""
    return bool(
        np.array_equal(a.tokens_bn, b.tokens_bn)
        and np.array_equal(a.lengths_b, b.lengths_b)
        and np.allclose(a.logprobs_bn, b.logprobs_bn, rtol=1e-4, atol=1e-4)
    )


def table_row(mode: str, slots: int, result: RunResult, requests: int) -> dict:
    """One printed row of a mode's figures."""
    return {
        "mode": mode,
        "slots": slots,
        "requests": requests,
        "useful tokens": f"{result.useful_tokens:,}",
        "slot-steps": f"{result.slot_steps:,}",
        "utilisation": f"{result.useful_tokens / result.slot_steps:.3f}",
        "seconds": f"{result.seconds:.2f}",
        "useful tok/s": f"{result.useful_tokens / result.seconds:,.0f}",
        "prefill s": f"{result.prefill_s:.2f}",
        "decode s": f"{result.decode_s:.2f}",
        "calls": result.calls,
    }


def compare(cfg, params, work: Workload, config: sampling.SamplingConfig, slots: int, max_prompt: int):
    """(table rows for static and engine at `slots`, engine / static tokens/s, outputs equal)."""
    static = run_static(cfg, params, work, config, slots, max_prompt)
    engine = run_engine(cfg, params, work, config, slots, max_prompt)
    ratio = (engine.useful_tokens / engine.seconds) / (static.useful_tokens / static.seconds)
    num = len(work.prompts)
    rows = [table_row("static", slots, static, num), table_row("engine", slots, engine, num)]
    rows[0]["engine / static tok/s"], rows[1]["engine / static tok/s"] = "", f"{ratio:.2f}x"
    return rows, ratio, same_outputs(static.gen, engine.gen)


def demo_policy_config():
    """The demo's policy-LM shape (`DemoLMSpec` defaults at the demo's vocabulary)."""
    return DemoLMSpec().model_config(DEMO_VOCAB)


def parse(argv=None) -> argparse.Namespace:
    """Flags of the engine comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, action="append", default=None, help="repeatable (default 8 and 32)")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--min-prompt", type=int, default=8)
    parser.add_argument("--max-prompt", type=int, default=64)
    parser.add_argument("--median", type=float, default=64.0, help="median of the log-normal budgets")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-sd of the log-normal budgets")
    parser.add_argument("--cap", type=int, default=512, help="max_new_tokens (the paper's cap is 4096)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Build the workload, compare static batches and the engine at each slot count, print."""
    args = parse(argv)
    cfg = demo_policy_config()
    params = jax.device_put(T.init_params(cfg, jax.random.key(0)))
    config = sampling.SamplingConfig.polar(max_new_tokens=args.cap, loop_max_ngram=0)
    work = make_workload(
        args.requests, args.min_prompt, args.max_prompt, args.median, args.sigma, args.cap, cfg.vocab_size, args.seed
    )
    budgets = work.budgets_r
    print(
        f"budgets: mean {budgets.mean():.1f}, median {np.median(budgets):.0f}, max {budgets.max()}, "
        f"at cap {int((budgets == args.cap).sum())}; load before: {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for slots in args.slots or (8, 32):
        pair, _, equal = compare(cfg, params, work, config, slots, args.max_prompt)
        rows += pair
        floor = fifo_slot_steps(budgets, slots)
        print(
            f"slots {slots}: outputs equal: {equal}; list scheduling in arrival order at a fixed {slots} slots: "
            f"{floor:,} slot-steps (utilisation {budgets.sum() / floor:.3f}; the engine goes below it by "
            "shrinking its state in the drain, when no request waits)"
        )
    device = jax.devices()[0]
    print_table(
        rows,
        f"static batches vs engine: demo policy-LM shape (d {cfg.d_model}, {cfg.num_layers} layers, vocab "
        f"{cfg.vocab_size}), random weights, float32; prompts {args.min_prompt}..{args.max_prompt}, budgets "
        f"log-normal median {args.median:g} sigma {args.sigma:g} clipped to [1, {args.cap}]; T 1.0, top-k 50, "
        f"top-p 0.9; jax {jax.__version__} on {device.platform} ({os.cpu_count()} host cores), load after "
        f"{os.getloadavg()[0]:.2f}",
    )


if __name__ == "__main__":
    main()
