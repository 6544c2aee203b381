"""Attention back-ends behind one function, `attend`.

All back-ends share one rule: query i of a row sees key j when both carry the same non-zero
segment id and key j's position is not after query i's. Segment id 0 marks padding (and empty
KV-cache slots), so packed rows, padded rows and cached decoding are one mechanism.

- "xla":    plain einsum + masked softmax; the reference, runs everywhere (CPU tests).
- "cudnn":  `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on GPU).
- "pallas": the TPU splash/flash kernel (`attention_pallas.py`).
- "auto":   cudnn on GPU (16-bit inputs), pallas on TPU, xla elsewhere.
The fused kernels need self-attention over one row (no cache); cached decoding uses "xla",
which is memory-bound there anyway.

Shape suffixes as in `transformer.py`: b batch, t query tokens, s key slots, h query heads,
k kv heads, g query heads per kv head (h = k g), e head_dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_bt, kv_segment_bs, q_pos_bt, kv_pos_bs):
    """Boolean [B, T, S]: same non-zero segment and key position <= query position."""
    same_segment = (q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]) & (kv_segment_bs[:, None, :] != 0)
    causal = kv_pos_bs[:, None, :] <= q_pos_bt[:, :, None]
    return same_segment & causal


def xla_attention(q_bthe, k_bske, v_bske, mask_bts):
    """Reference attention; grouped-query heads h use kv head h // (H / K), as in HF."""
    b, t, h, e = q_bthe.shape
    k = k_bske.shape[2]
    q_btkge = q_bthe.reshape(b, t, k, h // k, e)
    logits_bkgts = jnp.einsum("btkge,bske->bkgts", q_btkge, k_bske).astype(jnp.float32)
    logits_bkgts = logits_bkgts * (e**-0.5)
    logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, _MASK_VALUE)
    probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1).astype(v_bske.dtype)
    out_btkge = jnp.einsum("bkgts,bske->btkge", probs_bkgts, v_bske)
    return out_btkge.reshape(b, t, h, e)


def cudnn_attention(q_bthe, k_bske, v_bske, segment_ids_bt):
    """cuDNN flash attention for one packed row: causal by index plus a same-segment mask."""
    same_segment_bts = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
    return jax.nn.dot_product_attention(
        q_bthe,
        k_bske,
        v_bske,
        mask=same_segment_bts[:, None],
        is_causal=True,
        implementation="cudnn",
    )


def _pallas(q_bthe, k_bske, v_bske, segment_ids_bt):
    """The TPU kernel; under a multi-device mesh, inside `shard_map` (a Pallas call is opaque
    to the partitioner), split like the activations: batch and heads per the logical rules."""
    from polar_jax.models import attention_pallas  # TPU-only kernel; import on use

    # Off TPU the kernel can only run in Pallas interpret mode (tests, CPU checks).
    interpret = target_platform() != "tpu"
    mesh = jax.sharding.get_abstract_mesh()  # inside jit: the mesh `parallel.use_rules` set
    if mesh.empty or mesh.size == 1:
        return attention_pallas.pallas_attention(q_bthe, k_bske, v_bske, segment_ids_bt, interpret=interpret)
    batch_axes, _, head_axis, _ = nn.logical_to_mesh_axes(("batch", None, "heads", None))
    if head_axis is not None and k_bske.shape[2] % mesh.shape[head_axis]:
        head_axis = None  # too few kv heads to split: each device computes all heads
    return attention_pallas.sharded_pallas_attention(
        q_bthe,
        k_bske,
        v_bske,
        segment_ids_bt,
        mesh=mesh,
        batch_axes=batch_axes,
        head_axis=head_axis,
        interpret=interpret,
    )


def target_platform() -> str:
    """The platform being compiled for: that of the current mesh's devices (an ahead-of-time
    TPU topology from `polar_jax.aot` included), else JAX's default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def resolve_impl(impl: str, dtype=jnp.bfloat16, seq_len: int = 128) -> str:
    """Turn "auto" into the back-end for the target platform, compute dtype and row length.

    cuDNN's fused attention takes only 16-bit inputs, so float32 on GPU runs "xla"; the TPU
    kernel tiles rows in blocks of 128, so other lengths on TPU run "xla".
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if impl == "cudnn" and not half:
        raise ValueError(
            f"attention_impl='cudnn' needs bfloat16 or float16 inputs, got {jnp.dtype(dtype)}; "
            "set the model dtype to bfloat16 or use attention_impl='auto' / 'xla'"
        )
    if impl != "auto":
        return impl
    platform = target_platform()
    if platform == "gpu":
        return "cudnn" if half else "xla"
    return "pallas" if platform == "tpu" and seq_len % 128 == 0 else "xla"


def attend(
    q_bthe,
    k_bske,
    v_bske,
    *,
    q_segment_bt,
    kv_segment_bs,
    q_pos_bt,
    kv_pos_bs,
    impl: str = "xla",
    self_attention: bool = True,
):
    """Masked grouped-query attention; `self_attention` says keys are the queries' own row.

    Fused kernels assume causality by index, which holds for a row whose positions restart
    at 0 per segment and increase by one, i.e. every row without a KV cache.
    """
    impl = resolve_impl(impl, q_bthe.dtype, q_bthe.shape[1])
    if impl == "xla" or not self_attention:
        mask_bts = attention_mask(q_segment_bt, kv_segment_bs, q_pos_bt, kv_pos_bs)
        return xla_attention(q_bthe, k_bske, v_bske, mask_bts)
    if impl == "cudnn":
        return cudnn_attention(q_bthe, k_bske, v_bske, q_segment_bt)
    if impl == "pallas":
        return _pallas(q_bthe, k_bske, v_bske, q_segment_bt)
    raise ValueError(f"unknown attention impl {impl!r}")
