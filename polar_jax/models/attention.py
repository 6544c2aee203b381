"""Attention back-ends behind one function, `attend`.

All back-ends share one rule: query i of a row sees key j when both carry the same non-zero
segment id, key j's branch is 0 or query i's own branch, and key j's position is not after
query i's. Segment id 0 marks padding (and empty KV-cache slots), so packed rows, padded rows
and cached decoding are one mechanism. Branches are the shared-prefix layout (`data.batch`): a
segment's branch-0 tokens (the prefix shared by its candidates) come first, then each
candidate's suffix as branch 1, 2, ...; a suffix sees its prefix and itself, never a sibling.
Without branch ids every token is branch 0, which is the plain segment rule.

`window` (> 0) says that every segment spans at most `window` tokens of its row (the packer
guarantees it, `data.packing`): then a query's keys all lie in the `window` tokens ending at
it, and the XLA path computes only those (query block x key window) tiles instead of the whole
row, which is exact and costs T x (window + block) instead of T x T. cuDNN receives it as its
sliding window.

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


# Query rows per tile of the windowed XLA path (`windowed_attention`): the one of these whose key
# window, (ceil((window - 1) / block) + 1) x block, is shortest (ties: the larger block).
WINDOW_BLOCKS = (128, 64, 32, 16)
WINDOW_BLOCK = WINDOW_BLOCKS[0]  # the largest tile (keys per query: `window_keys`)


def window_block(window: int) -> int:
    """The tile the windowed XLA path uses for `window`: keys per query = (ceil((window - 1) / c) + 1) c,
    smallest over `WINDOW_BLOCKS` (on 2 CPU cores, window 134 at T 512: 16 rows, 160 keys, 1.8x faster than
    128 rows, 384 keys)."""
    return min(WINDOW_BLOCKS, key=lambda c: (-(-(window - 1) // c) + 1) * c)


def window_keys(window: int, seq_len: int) -> int:
    """Keys per query the XLA path computes for rows of `seq_len` with `window` (0: the whole row)."""
    if not 0 < window < seq_len:
        return seq_len
    c = window_block(window)
    return min((-(-(window - 1) // c) + 1) * c, seq_len)


def attention_mask(q_segment_bt, kv_segment_bs, q_pos_bt, kv_pos_bs, q_branch_bt=None, kv_branch_bs=None):
    """Boolean [B, T, S]: same non-zero segment, key branch 0 or the query's, key position <= query position."""
    same_segment = (q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]) & (kv_segment_bs[:, None, :] != 0)
    causal = kv_pos_bs[:, None, :] <= q_pos_bt[:, :, None]
    if kv_branch_bs is None:
        return same_segment & causal
    visible_branch = (kv_branch_bs[:, None, :] == 0) | (kv_branch_bs[:, None, :] == q_branch_bt[:, :, None])
    return same_segment & causal & visible_branch


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


def windowed_attention(q_bthe, k_bske, v_bske, segment_bt, pos_bt, branch_bt, window: int, block: int | None = None):
    """Self-attention over one row computing only the keys within `window` tokens of each query.

    Exact when every segment spans at most `window` tokens: query block n (tokens [n c, n c + c))
    then needs key blocks n - w .. n, w = ceil((window - 1) / c). Keys are gathered into those
    windows ([B, N, (w + 1) c, ...]) and the mask of `attention_mask` applies inside them.
    Here n indexes query blocks, c tokens in a block, s key slots of a block's window.
    """
    b, t, h, e = q_bthe.shape
    c = min(block or window_block(window), t)
    n = -(-t // c)
    w = -(-(window - 1) // c)
    pad = n * c - t
    branch_bt = jnp.zeros_like(segment_bt) if branch_bt is None else branch_bt

    def blocks(x, front):  # [B, T, ...] -> [B, front + N, c, ...], zero-padded (segment 0: masked)
        x = jnp.pad(x, [(0, 0), (front * c, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, front + n, c, *x.shape[2:])

    def windows(x):  # [B, T, ...] -> [B, N, (w + 1) c, ...]: key block n - w .. n for query block n
        xb = blocks(x, w)
        return jnp.concatenate([xb[:, o : o + n] for o in range(w + 1)], axis=2)

    k = k_bske.shape[2]
    q_bnckge = blocks(q_bthe, 0).reshape(b, n, c, k, h // k, e)
    k_bnske, v_bnske = windows(k_bske), windows(v_bske)
    q_seg_bnc, kv_seg_bns = blocks(segment_bt, 0), windows(segment_bt)
    q_pos_bnc, kv_pos_bns = blocks(pos_bt, 0), windows(pos_bt)
    q_br_bnc, kv_br_bns = blocks(branch_bt, 0), windows(branch_bt)
    mask_bncs = attention_mask(
        q_seg_bnc.reshape(b * n, c),
        kv_seg_bns.reshape(b * n, -1),
        q_pos_bnc.reshape(b * n, c),
        kv_pos_bns.reshape(b * n, -1),
        q_br_bnc.reshape(b * n, c),
        kv_br_bns.reshape(b * n, -1),
    ).reshape(b, n, c, -1)
    logits_bnkgcs = jnp.einsum("bnckge,bnske->bnkgcs", q_bnckge, k_bnske).astype(jnp.float32) * (e**-0.5)
    logits_bnkgcs = jnp.where(mask_bncs[:, :, None, None], logits_bnkgcs, _MASK_VALUE)
    probs_bnkgcs = jax.nn.softmax(logits_bnkgcs, axis=-1).astype(v_bske.dtype)
    out_bnckge = jnp.einsum("bnkgcs,bnske->bnckge", probs_bnkgcs, v_bnske)
    return out_bnckge.reshape(b, n * c, h, e)[:, :t]


def cudnn_attention(q_bthe, k_bske, v_bske, segment_ids_bt, branch_bt=None, window: int = 0):
    """cuDNN flash attention for one packed row: causal by index plus the segment (and branch) mask;
    `window` > 0 becomes cuDNN's sliding window (exact under the `window` guarantee)."""
    positions_bt = jnp.broadcast_to(jnp.arange(segment_ids_bt.shape[1]), segment_ids_bt.shape)
    mask_bts = attention_mask(segment_ids_bt, segment_ids_bt, positions_bt, positions_bt, branch_bt, branch_bt)
    return jax.nn.dot_product_attention(
        q_bthe,
        k_bske,
        v_bske,
        mask=mask_bts[:, None],
        is_causal=True,
        local_window_size=(window - 1, 0) if window > 0 else None,
        implementation="cudnn",
    )


def _pallas(q_bthe, k_bske, v_bske, segment_ids_bt, branch_bt=None, window: int = 0):
    """The TPU kernel; under a multi-device mesh, inside `shard_map` (a Pallas call is opaque
    to the partitioner), split like the activations: batch and heads per the logical rules.
    Branch ids (shared-prefix rows) go to splash's exact two-call tree mask, split like the
    segment ids; `window` > 0 makes splash skip the key blocks outside it."""
    from polar_jax.models import attention_pallas  # TPU-only kernel; import on use

    # Off TPU the kernel can only run in Pallas interpret mode (tests, CPU checks).
    options = {"interpret": target_platform() != "tpu", "window": window}
    mesh = jax.sharding.get_abstract_mesh()  # inside jit: the mesh `parallel.use_rules` set
    if mesh.empty or mesh.size == 1:
        return attention_pallas.pallas_attention(q_bthe, k_bske, v_bske, segment_ids_bt, branch_bt, **options)
    batch_axes, _, head_axis, _ = nn.logical_to_mesh_axes(("batch", None, "heads", None))
    if head_axis is not None and k_bske.shape[2] % mesh.shape[head_axis]:
        head_axis = None  # too few kv heads to split: each device computes all heads
    return attention_pallas.sharded_pallas_attention(
        q_bthe,
        k_bske,
        v_bske,
        segment_ids_bt,
        branch_bt,
        mesh=mesh,
        batch_axes=batch_axes,
        head_axis=head_axis,
        **options,
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
    q_branch_bt=None,
    kv_branch_bs=None,
    impl: str = "xla",
    self_attention: bool = True,
    window: int = 0,
):
    """Masked grouped-query attention; `self_attention` says keys are the queries' own row.

    Fused kernels assume causality by index, which holds for every row without a KV cache:
    positions restart at 0 per segment and increase by one, and in the shared-prefix layout a
    suffix's positions continue from its prefix's end, laid out after it. `window` > 0: every
    segment spans at most that many tokens (see the module docstring); 0: the whole row.
    """
    impl = resolve_impl(impl, q_bthe.dtype, q_bthe.shape[1])
    t = q_bthe.shape[1]
    if not self_attention or (impl == "xla" and window_keys(window, t) >= t):
        mask_bts = attention_mask(q_segment_bt, kv_segment_bs, q_pos_bt, kv_pos_bs, q_branch_bt, kv_branch_bs)
        return xla_attention(q_bthe, k_bske, v_bske, mask_bts)
    if impl == "xla":
        return windowed_attention(q_bthe, k_bske, v_bske, q_segment_bt, q_pos_bt, q_branch_bt, window)
    if impl == "cudnn":
        return cudnn_attention(q_bthe, k_bske, v_bske, q_segment_bt, q_branch_bt, window if window < t else 0)
    if impl == "pallas":
        return _pallas(q_bthe, k_bske, v_bske, q_segment_bt, q_branch_bt, window if window < t else 0)
    raise ValueError(f"unknown attention impl {impl!r}")
