"""Train-step throughput: step time, useful tokens/s and MFU, on one device and sharded, and
(on a GPU) the same reward model in transformers + PyTorch, eager and torch.compile.

    python -m polar_jax.bench.train_step                                   # tiny model, CPU, 1 and 8 devices
    python -m polar_jax.bench.train_step --model 800m --batch 8 --seq 2048 --torch eager,compile   # GPU

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


if __name__ == "__main__":
    main()
