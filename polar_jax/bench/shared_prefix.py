"""The shared-prefix layout against whole rows (issue #16): reward-model train-step pairs/s, RFT scores/s.

    python -m polar_jax.bench.shared_prefix --demo-data runs/demo/prepared/train    # (a), (b), (c) on CPU
    python -m polar_jax.bench.shared_prefix --sections a                            # demo-like lengths, synthesised

(a) the demo's reward model and packing (rows of 512, 16 rows x 2 pair slots per step) on the demo's
    pairs: the whole-row path (unshared, window 0: what the trainer ran before) against the shared
    layout with the window (its longest segment, as data.attention_window=-1 takes it), alone and with
    more pairs per row in as many pair slots per step.
(b) paper-like lengths (`pair_lengths.paper_pairs`) in rows of --paper-row tokens.
(c) RFT groups of --rollouts rollouts scored against one reference through `scoring.reward_scores`,
    shared_prefix=False against True: forward only (`bench.rft_scoring`).
A case goes through all of its section's pairs once per epoch, with the train step (forward,
backward and AdamW update, jitted as bench.train_step does it). The cases of a section are timed in
turn, round after round (one warm-up round first), and the medians compared: the ratios are measured
side by side. Beside each case: the real tokens, the token slots (rows x row length) and the
attention scores it computes, as ratios to the first case's, and how far its mean loss and
gradient per pair over all the pairs are from the first case's (max |diff| / max |first|; float32, the same
parameters); "equal" below a table means the tests' criterion (allclose, rtol 1e-5, atol 1e-6).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import numpy as np

from polar_jax import parallel
from polar_jax.bench.common import print_table
from polar_jax.data import packing
from polar_jax.data.batch import check_batch, pair_span, shared_prefix_length
from polar_jax.models import attention
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.train import step as S

# The demo's reward model (polar_jax.demo: rm_size (64, 2, 4), vocab 2048): the bench's "tiny" with its vocab.
DEMO_MODEL = dict(vocab_size=2048, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)
EXACT_RTOL = 1e-5
EXACT_ATOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way to lay pairs out: shared prefix or not, rows per step, row length, pair slots per row,
    and whether the step takes the window (the longest segment of these pairs in this layout)."""

    name: str
    shared: bool
    rows: int
    row_len: int
    pairs_per_row: int
    windowed: bool


def longest_segment(pairs: list[dict], shared: bool) -> int:
    """The longest segment of `pairs` in the (un)shared layout: what data.attention_window=-1 takes."""
    return max(
        pair_span(
            len(p["chosen"]),
            len(p["rejected"]),
            shared_prefix_length(p["chosen"], p["rejected"]) if shared else 0,
            shared,
        )[1]
        for p in pairs
    )


def window_for(longest: int, row_len: int, windowed: bool) -> int:
    """The step's attention_window: the longest segment if windowed and shorter than a row, else 0."""
    return longest if windowed and longest < row_len else 0


def attention_scores(rows: int, row_len: int, window: int) -> int:
    """Query x key scores the XLA attention computes for `rows` rows (the rule of `attention.attend`)."""
    if 0 < window < row_len - attention.WINDOW_BLOCK:
        c = min(attention.WINDOW_BLOCK, row_len)
        return rows * (-(-row_len // c)) * c * (-(-(window - 1) // c) + 1) * c
    return rows * row_len * row_len


def time_rounds(epochs: list[Callable[[], None]], repeats: int) -> list[float]:
    """Median seconds of each of `epochs`, called in turn for `repeats` rounds after one warm-up round."""
    for epoch in epochs:
        epoch()
    times = [[] for _ in epochs]
    for _ in range(repeats):
        for epoch, seconds in zip(epochs, times):
            start = time.perf_counter()
            epoch()
            seconds.append(time.perf_counter() - start)
    return [sorted(s)[len(s) // 2] for s in times]


def relative_difference(got, want) -> float:
    """max |got - want| / max |want| over the leaves of two pytrees (or two numbers)."""
    diffs = [
        float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64))))
        / max(float(np.max(np.abs(np.asarray(w, np.float64)))), 1e-30)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))
    ]
    return max(diffs)


def all_close(got, want) -> bool:
    """Every leaf of `got` within rtol EXACT_RTOL, atol EXACT_ATOL of `want`'s (the tests' criterion)."""
    return all(
        np.allclose(g, w, rtol=EXACT_RTOL, atol=EXACT_ATOL) for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))
    )


@functools.partial(jax.jit, static_argnames=("cfg", "window", "shared"))
def _loss_and_grads(params, batch: dict, cfg: ModelConfig, window: int, shared: bool):
    return jax.grad(S.loss_sums, has_aux=True)(params, batch, cfg, 0.0, window, shared)


def total_loss_and_grads(cfg: ModelConfig, params, batches: list[dict], window: int, shared: bool = True):
    """(mean loss, mean gradient) per pair of `params` over all `batches` (what one train step over them
    all would apply, and what the tests compare): equal in every exact layout."""
    loss, grads, pairs = 0.0, None, 0.0
    for batch in batches:
        g, sums = _loss_and_grads(params, batch, cfg, window, shared)
        grads = g if grads is None else jax.tree.map(np.add, grads, g)
        loss += float(sums["loss_sum"])
        pairs += float(sums["pairs"])
    return loss / pairs, jax.tree.map(lambda g: np.asarray(g) / pairs, grads)


@dataclasses.dataclass
class TrainCase:
    """One layout of a section's pairs, ready to train on: host batches, the jitted step and its state."""

    layout: Layout
    window: int
    host_batches: list[dict]
    mesh: jax.sharding.Mesh
    step: Callable
    state: object
    batches: list[dict]

    def epoch(self) -> None:
        """One train step per batch, every pair once; waits for the last step."""
        with parallel.use_rules(self.mesh):
            for batch in self.batches:
                self.state, metrics = self.step(self.state, batch)
            jax.block_until_ready(metrics["loss"])


def packed_batches(pairs: list[dict], layout: Layout) -> list[dict]:
    """`pairs` packed as `layout` says (first-fit, as the trainer packs), each batch checked against the
    contract; the step's fields only."""
    host = packing.pack_pairs(
        pairs,
        batch_size=layout.rows,
        seq_len=layout.row_len,
        max_pairs_per_row=layout.pairs_per_row,
        shared_prefix=layout.shared,
    )
    for batch in host:
        check_batch(batch)
    return [{k: b[k] for k in S.BATCH_KEYS} for b in host]


def train_case(cfg: ModelConfig, host: list[dict], layout: Layout, window: int) -> TrainCase:
    """A fresh state and the train step jitted for `window` (single device), over the batches `host`."""
    from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
    from polar_jax.train.state import create_state

    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    optim_cfg = OptimConfig(lr=1e-5)
    optimizer = make_optimizer(optim_cfg, 1000)
    state = create_state(cfg, optimizer, jax.random.key(0), mesh)
    step = jax.jit(
        functools.partial(
            S.train_step,
            model_cfg=cfg,
            optimizer=optimizer,
            schedule=lr_schedule(optim_cfg, 1000),
            attention_window=window,
            shared_prefix=layout.shared,
        ),
        donate_argnums=0,
    )
    with parallel.use_rules(mesh):
        batches = [
            {k: jax.device_put(v, parallel.batch_sharding(mesh, ndim=v.ndim)) for k, v in b.items()} for b in host
        ]
    return TrainCase(layout, window, host, mesh, step, state, batches)


def layout_case(cfg: ModelConfig, pairs: list[dict], layout: Layout) -> TrainCase:
    """`pairs` packed as `layout` says, with its window (the longest segment, if windowed), ready to train."""
    window = window_for(longest_segment(pairs, layout.shared), layout.row_len, layout.windowed)
    return train_case(cfg, packed_batches(pairs, layout), layout, window)


def case_counts(case: TrainCase) -> dict:
    """Real tokens, token slots and attention scores computed by one epoch of `case`."""
    rows, row_len = case.layout.rows, case.layout.row_len
    return {
        "tokens": sum(int(np.count_nonzero(b["segment_ids_bt"])) for b in case.host_batches),
        "slots": len(case.host_batches) * rows * row_len,
        "scores": len(case.host_batches) * attention_scores(rows, row_len, case.window),
    }


def train_section(title: str, cfg: ModelConfig, pairs: list[dict], layouts: list[Layout], repeats: int) -> list:
    """Time every layout of `pairs` side by side, print the table; returns [(layout name, speedup, exact)]."""
    params = T.init_params(cfg, jax.random.key(0))
    cases = [layout_case(cfg, pairs, layout) for layout in layouts]
    totals = [total_loss_and_grads(cfg, params, c.host_batches, c.window, c.layout.shared) for c in cases]
    seconds = time_rounds([c.epoch for c in cases], repeats)
    counts = [case_counts(c) for c in cases]
    rows, verdicts = [], []
    for case, s, (loss, grads), count in zip(cases, seconds, totals, counts):
        loss_diff = abs(loss - totals[0][0]) / abs(totals[0][0])
        grad_diff = relative_difference(grads, totals[0][1])
        exact = loss_diff <= EXACT_RTOL and all_close(grads, totals[0][1])
        verdicts.append((case.layout.name, seconds[0] / s, exact))
        rows.append(
            {
                "layout": case.layout.name,
                "rows x len": f"{case.layout.rows} x {case.layout.row_len}",
                "window": case.window or "row",
                "steps": len(case.batches),
                "pairs/s": f"{len(pairs) / s:,.1f}",
                "speedup": f"{seconds[0] / s:.2f}x",
                "tokens": f"{count['tokens'] / counts[0]['tokens']:.2f}",
                "slots": f"{count['slots'] / counts[0]['slots']:.2f}",
                "attn scores": f"{count['scores'] / counts[0]['scores']:.2f}",
                "loss diff": f"{loss_diff:.1e}",
                "grad diff": f"{grad_diff:.1e}",
            }
        )
    print_table(rows, title)
    for name, speedup, exact in verdicts[1:]:
        verdict = "equal to" if exact else "NOT equal to"
        print(
            f"  {name}: {speedup:.2f}x pairs/s; loss (rtol {EXACT_RTOL:g}) and gradients (allclose, rtol "
            f"{EXACT_RTOL:g}, atol {EXACT_ATOL:g}) {verdict} the first row's"
        )
    return verdicts


def demo_section(args: argparse.Namespace) -> None:
    """(a): the demo's pairs, model and packing; the whole-row path against the shared layouts."""
    from polar_jax.bench import pair_lengths

    cfg = ModelConfig(**DEMO_MODEL, heads=("reward",), dtype="float32")
    if args.demo_data:
        pairs, source = pair_lengths.demo_pairs(args.demo_data, args.pairs), args.demo_data
    else:
        pairs, source = pair_lengths.demo_like_pairs(args.pairs, cfg.vocab_size), "synthesised demo-like lengths"
    layouts = [
        Layout("whole rows (before)", False, 16, 512, 2, False),
        Layout("whole rows, window", False, 16, 512, 2, True),
        Layout("shared, window", True, 16, 512, 2, True),
        Layout("shared, window, 4/row", True, 8, 512, 4, True),
        Layout("shared, window, 8/row", True, 4, 512, 8, True),
    ]
    train_section(
        f"(a) demo reward model ({cfg.num_params() / 1e6:.2f}M params, float32), {len(pairs)} pairs from "
        f"{source}; 32 pair slots per step; train step, median of {args.repeats} epochs",
        cfg,
        pairs,
        layouts,
        args.repeats,
    )


def paper_section(args: argparse.Namespace) -> None:
    """(b): paper-like lengths in rows of --paper-row tokens, a small model."""
    from polar_jax.bench import pair_lengths
    from polar_jax.bench.train_step import MODELS

    cfg = ModelConfig(**MODELS[args.paper_model], heads=("reward",), dtype="float32")
    row = args.paper_row
    pairs, dropped = pair_lengths.paper_pairs(args.paper_pairs, cfg.vocab_size, row, sigma=args.sigma)
    layouts = [
        Layout("whole rows (before)", False, 1, row, 8, False),
        Layout("whole rows, window", False, 1, row, 8, True),
        Layout("shared, window", True, 1, row, 8, True),
        Layout("shared, window, 2 rows", True, 2, row, 8, True),
    ]
    train_section(
        f"(b) paper-like lengths (prompt log-uniform 1..1024, responses log-normal median 400 sigma {args.sigma} "
        f"capped at 4096; {dropped} drawn pairs over {row} tokens unshared left out), {len(pairs)} pairs, "
        f"{args.paper_model} model; train step, median of {args.repeats} epochs",
        cfg,
        pairs,
        layouts,
        args.repeats,
    )


def parse(argv=None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="a,b,c", help="which of a, b, c to run")
    p.add_argument("--demo-data", default="", help="(a): a prepared directory to read pairs from")
    p.add_argument("--pairs", type=int, default=256, help="(a): pairs per epoch")
    p.add_argument("--paper-pairs", type=int, default=32, help="(b): pairs per epoch")
    p.add_argument("--paper-row", type=int, default=8192, help="(b): tokens per row")
    p.add_argument("--paper-model", default="tiny", help="(b): a model of bench.train_step")
    p.add_argument("--sigma", type=float, default=0.8, help="(b): the log-normal sigma of response lengths")
    p.add_argument("--groups", type=int, default=32, help="(c): RFT groups per epoch")
    p.add_argument("--rollouts", type=int, default=8, help="(c): rollouts per group")
    p.add_argument("--rft-prompt", type=int, default=24, help="(c): the longest prompt (log-uniform from 1)")
    p.add_argument("--rft-response", type=int, default=24, help="(c): the longest reference / rollout")
    p.add_argument("--rft-model", default="demo", help="(c): 'demo' or a model of bench.train_step")
    p.add_argument("--rft-batch", type=int, default=8, help="(c): rows per scoring call (reward_scores' batch_size)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per case (after one warm-up)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run the requested sections, printing one table each."""
    args = parse(argv)
    sections = args.sections.split(",")
    print(f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), {jax.device_count()} device(s)")
    if "a" in sections:
        demo_section(args)
    if "b" in sections:
        paper_section(args)
    if "c" in sections:
        from polar_jax.bench import rft_scoring

        rft_scoring.rft_section(args)


if __name__ == "__main__":
    main()
