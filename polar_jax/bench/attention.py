"""Attention back-ends on packed rows: agreement with the XLA reference and speed.

    python -m polar_jax.bench.attention                      # this machine's back-ends
    python -m polar_jax.bench.attention --seq 4096 --heads 16 --kv-heads 4 --head-dim 128

Rows hold several segments (causal within each, none across) plus trailing padding.
"cudnn" runs on GPU; "pallas" runs on TPU, and in interpret mode elsewhere at small sizes.
Errors are max |out - xla| over non-padding positions, forward and d(sum(out * w))/dq.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from polar_jax.bench.common import print_table, time_call
from polar_jax.models import attention


def packed_segment_ids(batch: int, seq: int, rng: np.random.Generator) -> np.ndarray:
    """Random segment layouts: 2 to 4 segments per row, then up to 10% padding."""
    ids = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        used = seq - rng.integers(0, seq // 10 + 1)
        cuts = np.sort(rng.choice(np.arange(1, used), size=rng.integers(1, 4), replace=False))
        for s, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, used])):
            ids[b, lo:hi] = s + 1
    return ids


def positions_of(segment_ids: np.ndarray) -> np.ndarray:
    """Positions restarting at 0 at each segment start."""
    pos = np.zeros_like(segment_ids)
    for b in range(segment_ids.shape[0]):
        for t in range(1, segment_ids.shape[1]):
            pos[b, t] = pos[b, t - 1] + 1 if segment_ids[b, t] == segment_ids[b, t - 1] else 0
    return pos


def run_impl(impl, q, k, v, seg, pos, w):
    def out(q, k, v):
        return attention.attend(q, k, v, q_segment_bt=seg, kv_segment_bs=seg, q_pos_bt=pos, kv_pos_bs=pos, impl=impl)

    fwd = jax.jit(out)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(out(q, k, v).astype(jnp.float32) * w)))
    return fwd, grad


def available_impls(seq: int) -> list[str]:
    """Back-ends that can run here at this length."""
    backend = jax.default_backend()
    impls = ["xla"]
    if backend == "gpu":
        impls.append("cudnn")
    if backend == "tpu" or seq <= 512:  # interpret mode off TPU: slow, small sizes only
        if seq % 128 == 0:
            impls.append("pallas")
    return impls


def main(argv=None) -> None:
    """Run each available back-end, print errors against XLA and timings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    seg = jnp.asarray(packed_segment_ids(args.batch, args.seq, rng))
    pos = jnp.asarray(positions_of(np.asarray(seg)))
    keys = jax.random.split(jax.random.key(0), 4)
    b, t, h, kv, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    q = jax.random.normal(keys[0], (b, t, h, d), args.dtype)
    k = jax.random.normal(keys[1], (b, t, kv, d), args.dtype)
    v = jax.random.normal(keys[2], (b, t, kv, d), args.dtype)
    w = jax.random.normal(keys[3], (b, t, h, d), jnp.float32)
    valid = np.asarray(seg) != 0

    # The reference runs in float32 from the same (rounded) inputs.
    ref_fwd, ref_grad = run_impl(
        "xla", q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), seg, pos, w
    )
    ref_out = np.asarray(ref_fwd(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)))
    ref_dq = np.asarray(ref_grad(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)))
    # Causal attention FLOPs (half of full): forward 2 matmuls, backward 2.5x forward.
    fwd_flops = 2 * 2 * b * h * t * t * d / 2
    rows = []
    for impl in available_impls(t):
        fwd, grad = run_impl(impl, q, k, v, seg, pos, w)
        out = np.asarray(fwd(q, k, v)).astype(np.float32)
        dq = np.asarray(grad(q, k, v)).astype(np.float32)
        f_s = time_call(fwd, q, k, v)
        g_s = time_call(grad, q, k, v)
        rows.append(
            {
                "impl": impl,
                "max |out - ref|": f"{np.abs(out - ref_out)[valid].max():.4f}",
                "max |dq - ref|": f"{np.abs(dq - ref_dq)[valid].max():.4f}",
                "fwd ms": f"{f_s * 1e3:.2f}",
                "fwd TFLOP/s": f"{fwd_flops / f_s / 1e12:.1f}",
                "fwd+bwd ms": f"{g_s * 1e3:.2f}",
                "fwd+bwd TFLOP/s": f"{3.5 * fwd_flops / g_s / 1e12:.1f}",
            }
        )
    device = jax.devices()[0]
    print_table(
        rows,
        f"packed-row attention, B {b} T {t} H {h} K {kv} D {d}, {args.dtype}, "
        f"{device.platform} ({device.device_kind}); reference: xla in float32",
    )


if __name__ == "__main__":
    main()
