"""Train-step throughput: step time, useful tokens/s and MFU, on one device and sharded, and
(on a GPU) the same reward model in transformers + PyTorch, eager and torch.compile.

    python -m polar_jax.bench.train_step                                   # tiny model, CPU, 1 and 8 devices
    python -m polar_jax.bench.train_step --model 800m --batch 8 --seq 2048 --torch eager,compile   # GPU
    python -m polar_jax.bench.train_step --packed-rows 512,2048,8192 --dtype float32   # whole rows vs windowed

`--packed-rows` packs the demo's short pairs (`bench.pair_lengths.demo_like_pairs`) into rows of
each length (--packed-tokens tokens per step) and times, side by side on one device, the
whole-row attention, the windowed one (window: the longest sequence) and the shared-prefix
layout of the same pairs (fewer rows, window: the longest pair); same pairs, so the same loss.

Each row of a batch holds one pair: chosen and rejected of `seq / 2` tokens each (two
segments). The PyTorch side sees the same tokens as `2 x batch` rows of `seq / 2` tokens, one
sequence each, so both sides do the same attention and matmul work. Useful tokens exclude
padding (there is none here). MFU as `polar_jax/flops.py` counts it: 6 x non-embedding parameters + 6 x
layers x context x d_model per token, context = the sequence length, against the chip's bf16
peak (datasheet, named in the table).
"""

from __future__ import annotations

import argparse
import os
import sys

MODELS = {
    "tiny": dict(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128),
    # Between the two for CPU runs where the matmuls, not attention, dominate.
    "small": dict(vocab_size=2048, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=1024),
    "smollm2": dict(
        vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, mlp_dim=1536
    ),
    # Llama-shaped, ~820M parameters: the size of the H200 reference figures (batch 8 x 2048, AdamW: 87.6k tokens/s
    # in JAX with cuDNN attention; 64.9k in PyTorch eager, 83.2k with torch.compile; one run each).
    "800m": dict(
        vocab_size=32000, d_model=2048, num_layers=16, num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=5632
    ),
}


def parse(argv=None) -> argparse.Namespace:
    """Flags; read before JAX is imported, since `--devices` must reach XLA first."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8, help="rows per step (one pair each)")
    p.add_argument("--seq", type=int, default=512, help="tokens per row")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn", "pallas"))
    p.add_argument("--remat", default="none", choices=("none", "full", "dots", "dots_no_batch"))
    p.add_argument("--unroll", type=int, default=1, help="layers per scan iteration (scan_unroll)")
    p.add_argument(
        "--meshes", default="data=1;fsdp=-1", help="';'-separated meshes, e.g. 'data=1;fsdp=-1;data=2,tensor=4'"
    )
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (CPU only)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--torch", default="", help="GPU only: 'eager', 'compile' or 'eager,compile'")
    p.add_argument("--packed-rows", default="", help="row lengths, e.g. 512,2048,8192: whole rows vs windowed")
    p.add_argument("--packed-tokens", type=int, default=16384, help="--packed-rows: tokens per step (rows x length)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run every requested mesh (and PyTorch mode), print the table."""
    args = parse(argv)
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    import jax  # only now: XLA_FLAGS above must be set before JAX starts
    import numpy as np

    from polar_jax.bench.common import print_table
    from polar_jax.data.packing import make_batch
    from polar_jax.flops import peak_tflops, train_flops_per_token
    from polar_jax.models.config import ModelConfig
    from polar_jax.train import step as S

    cfg = ModelConfig(
        **MODELS[args.model],
        heads=("reward",),
        dtype=args.dtype,
        remat=args.remat,
        attention_impl=args.attention,
        scan_unroll=args.unroll,
    )
    if args.packed_rows:
        _packed_rows_mode(args, cfg)
        return
    half = args.seq // 2
    rng = np.random.default_rng(0)
    pairs = [
        {"chosen": rng.integers(1, cfg.vocab_size, half), "rejected": rng.integers(1, cfg.vocab_size, half)}
        for _ in range(args.batch)
    ]
    host_batch = make_batch([[p] for p in pairs], row_len=args.seq, max_pairs_per_row=1)
    host_batch = {k: host_batch[k] for k in S.BATCH_KEYS}
    peak, peak_source = peak_tflops()
    flops_per_token = train_flops_per_token(cfg, context=half)
    device = jax.devices()[0]
    rows = [_time_mesh(spec, args, cfg, host_batch, flops_per_token, peak) for spec in args.meshes.split(";")]
    if args.torch and device.platform == "gpu":
        rows += _torch_rows(args, cfg, flops_per_token, peak)
    print_table(
        rows,
        f"train step: {args.model} reward model ({cfg.num_params() / 1e6:.0f}M params), "
        f"{args.batch} rows x {args.seq} tokens (one pair of 2 x {half} per row), {args.dtype}, "
        f"attention {args.attention}, remat {args.remat}, unroll {args.unroll}; {device.platform} ({device.device_kind}); "
        f"MFU peak: {peak or 'n/a'} TFLOP/s ({peak_source})",
    )


def _time_mesh(spec: str, args: argparse.Namespace, cfg, host_batch: dict, flops_per_token: float, peak) -> dict:
    """The table row of polar_jax's train step on the mesh `spec` ("data=1", "fsdp=-1", ...): compile time,
    then the median of `args.steps` timed steps after one warm-up step, as step time, tokens/s, MFU and peak memory."""
    import functools
    import time

    import jax

    from polar_jax import parallel
    from polar_jax.train import step as S
    from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
    from polar_jax.train.state import create_state

    device = jax.devices()[0]
    axes = {k: int(v) for k, v in (item.split("=") for item in spec.split(","))}
    devices = jax.devices()[:1] if axes == {"data": 1} else None
    mesh = parallel.make_mesh(axes, devices)
    optimizer = make_optimizer(OptimConfig(lr=1e-5), 1000)
    state = create_state(cfg, optimizer, jax.random.key(0), mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(
        functools.partial(
            S.train_step, model_cfg=cfg, optimizer=optimizer, schedule=lr_schedule(OptimConfig(lr=1e-5), 1000)
        ),
        in_shardings=(shardings, parallel.batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with parallel.use_rules(mesh):
        batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, ndim=v.ndim)) for k, v in host_batch.items()}
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        compile_s = time.perf_counter() - start
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tokens_per_s = args.batch * args.seq / seconds
    memory = (device.memory_stats() or {}).get("peak_bytes_in_use") if device.platform == "gpu" else None
    return {
        "impl": f"polar_jax mesh {spec} ({mesh.size} dev)",
        "step ms": f"{seconds * 1e3:.1f}",
        "tokens/s": f"{tokens_per_s:,.0f}",
        "MFU": f"{tokens_per_s * flops_per_token / (peak * 1e12 * mesh.size):.1%}" if peak else "n/a",
        "compile s": f"{compile_s:.1f}",
        "peak GiB": f"{memory / 2**30:.1f}" if memory else "",
    }


def _torch_rows(args: argparse.Namespace, cfg, flops_per_token: float, peak) -> list[dict]:
    """The table rows of the same reward model in transformers + PyTorch, one per mode of `--torch`, each
    measured in a subprocess (polar_jax.bench.torch_train); a failed mode gets a row saying so."""
    import json
    import pathlib
    import subprocess

    half = args.seq // 2
    hf = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.mlp_dim,
        rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=False,
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    rows = []
    for mode in args.torch.split(","):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "polar_jax.bench.torch_train",
                json.dumps(hf),
                str(2 * args.batch),
                str(half),
                mode,
                str(max(args.steps, 5)),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        if out.returncode:
            rows.append({"impl": f"transformers ({mode}) FAILED: {out.stderr.strip().splitlines()[-1][:80]}"})
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "impl": f"transformers {r['transformers']} + torch {r['torch']} ({mode}, {r['attention']})",
                "step ms": f"{r['seconds'] * 1e3:.1f}",
                "tokens/s": f"{r['tokens_per_s']:,.0f}",
                "MFU": f"{r['tokens_per_s'] * flops_per_token / (peak * 1e12):.1%}" if peak else "n/a",
                "compile s": "",
                "peak GiB": f"{r['peak_gib']:.1f}",
            }
        )
    return rows


def _packed_rows_mode(args: argparse.Namespace, cfg) -> None:
    """`--packed-rows`: per row length, whole-row attention against windowed (and shared) step times."""
    from polar_jax.bench.common import print_table

    rows = []
    for row_len in (int(x) for x in args.packed_rows.split(",")):
        rows += _packed_rows_cases(args, cfg, row_len)
    print_table(
        rows,
        f"train step on rows packed with demo-length pairs (sequences of median ~64 tokens), {args.model} reward "
        f"model, {args.dtype}, {args.packed_tokens} token slots per step (shared: the same pairs in fewer rows), "
        f"one device; median of {args.steps} steps, cases timed in turn",
    )


def _packed_rows_cases(args: argparse.Namespace, cfg, row_len: int) -> list[dict]:
    """The table rows of one row length: one step of the same pairs laid out three ways, timed side by side."""
    import numpy as np

    from polar_jax.bench import pair_lengths
    from polar_jax.bench import shared_prefix as B
    from polar_jax.data import packing

    rows = max(args.packed_tokens // row_len, 1)
    slots = row_len // 32
    candidates = pair_lengths.demo_like_pairs(2 * rows * row_len // 100, cfg.vocab_size)
    unshared = packing.pack_pairs(candidates, batch_size=rows, seq_len=row_len, max_pairs_per_row=slots)[0]
    pairs = [candidates[int(i)] for i in unshared["record_index_bp"][unshared["pair_mask_bp"]]]
    packing.check_batch(unshared)
    unshared = {k: unshared[k] for k in B.S.BATCH_KEYS}
    shared = B.packed_batches(pairs, B.Layout("", True, rows, row_len, slots, True))
    if len(shared) != 1:
        raise RuntimeError(f"the shared layout of one unshared batch took {len(shared)} batches")
    used = int(np.max(np.flatnonzero(shared[0]["pair_mask_bp"].any(axis=1)))) + 1
    shared = {k: v[:used] for k, v in shared[0].items()}
    cases = [
        ("whole rows", unshared, rows, 0),
        ("windowed", unshared, rows, B.window_for(B.longest_segment(pairs, False), row_len, True)),
        ("shared, windowed", shared, used, B.window_for(B.longest_segment(pairs, True), row_len, True)),
    ]
    trains = [
        B.train_case(cfg, [batch], B.Layout(name, name.startswith("shared"), n, row_len, slots, bool(w)), w)
        for name, batch, n, w in cases
    ]
    losses = [float(_first_step_loss(t)) for t in trains]
    seconds = B.time_rounds([t.epoch for t in trains], args.steps)
    out = []
    for (name, batch, n, window), s, loss in zip(cases, seconds, losses):
        out.append(
            {
                "row len": row_len,
                "layout": name,
                "rows": n,
                "window": window or "row",
                "pairs": len(pairs),
                "step ms": f"{s * 1e3:.1f}",
                "pairs/s": f"{len(pairs) / s:,.1f}",
                "speedup": f"{seconds[0] / s:.2f}x",
                "tokens": int(np.count_nonzero(batch["segment_ids_bt"])),
                "loss": f"{loss:.6f}",
                "loss diff": f"{abs(loss - losses[0]) / abs(losses[0]):.1e}",
            }
        )
    return out


def _first_step_loss(case):
    """The loss of `case`'s first step from its fresh state (that step also compiles it)."""
    import jax

    from polar_jax import parallel

    with parallel.use_rules(case.mesh):
        case.state, metrics = case.step(case.state, case.batches[0])
    return jax.block_until_ready(metrics["loss"])


if __name__ == "__main__":
    main()
