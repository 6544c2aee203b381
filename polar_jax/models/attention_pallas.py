"""TPU attention back-end: the Pallas splash (preferred) or flash attention kernel.

Semantics are those of the XLA reference in `polar_jax.models.attention`:

- q [B, T, H, E], k and v [B, T, K, E] with H = K * G (grouped-query attention; query head h
  reads kv head h // G, the Hugging Face `repeat_kv` convention). The letters are those of
  `transformer.py`: B batch, T tokens, H query heads, K kv heads, E head_dim.
- Self-attention over one packed row: causal by index within the row, and a query sees only
  keys with its own segment id. Segment id 0 is padding: its outputs are don't-care but finite
  (a padding query sees the padding keys up to itself, so no softmax row is empty).
- With branch ids (the shared-prefix layout), the tree mask: a key of the query's segment is
  seen when its branch is 0 or the query's own. Splash only: two calls merged exactly by
  log-sum-exp, with a custom VJP (`attention_pallas_tree`).
- `window` > 0 (every segment spans at most that many tokens): splash's static mask is causal
  and local, so it skips the key blocks outside the window; flash ignores it (a speed hint).
- Softmax scale 1/sqrt(E), softmax statistics in float32, output dtype = q dtype.

Kernels. Splash attention (`make_splash_mha` with a `CausalMask` and `SegmentIds`) handles
GQA natively (kv head h // G). The older `flash_attention` kernel, the fallback (or
`kernel="flash"`), needs equal head counts, so k and v are repeated for it. Both kernels
tile T in blocks that are multiples of 128 (the TPU lane width): T must be a multiple of 128
and of the block sizes. Both have custom VJPs, so `jax.grad` works.

Both are Mosaic TPU kernels: off TPU they run only in Pallas interpret mode
(`interpret=True`), which is for tests on CPU and is slow.

Sharding. On a multi-device mesh call the kernel inside `shard_map`
(`sharded_pallas_attention`): a Pallas TPU call is an opaque custom call that the SPMD
partitioner cannot split, so under plain `jit` with sharded operands it would at best gather
them onto every device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

try:  # splash attention: the preferred kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as _splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as _splash_mask,
    )

    HAS_SPLASH = True
except ImportError:  # pragma: no cover - depends on the installed JAX
    _splash = _splash_mask = None
    HAS_SPLASH = False

try:  # flash attention: the fallback kernel
    from jax.experimental.pallas.ops.tpu import flash_attention as _flash

    HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the installed JAX
    _flash = None
    HAS_FLASH = False

# Every block, and so T, must be a multiple of the 128 TPU vector lanes.
MIN_BLOCK = 128
# Default block size: the largest of these that divides T.
_DEFAULT_BLOCKS = (512, 256, 128)


def default_block_size(seq_len: int) -> int:
    """The largest of 512, 256, 128 dividing `seq_len` (which must be a multiple of 128)."""
    _check_seq_len(seq_len)
    return next(b for b in _DEFAULT_BLOCKS if seq_len % b == 0)


def _check_seq_len(seq_len: int) -> None:
    if seq_len % MIN_BLOCK:
        raise ValueError(
            f"pallas_attention requires the sequence length T to be a multiple of {MIN_BLOCK} "
            f"(the minimum kernel block size, one TPU lane tile); got T={seq_len}. "
            f"Pad the packed rows to a multiple of {MIN_BLOCK}."
        )


def _resolve_block(name: str, block: int | None, seq_len: int) -> int:
    _check_seq_len(seq_len)
    if block is None:
        return default_block_size(seq_len)
    if block <= 0 or block % MIN_BLOCK:
        raise ValueError(f"pallas_attention: {name}={block} must be a positive multiple of 128")
    if seq_len % block:
        raise ValueError(
            "pallas_attention requires the sequence length T to be a multiple of the block "
            f"size: T={seq_len} is not a multiple of {name}={block}."
        )
    return block


def _interpret_value(interpret: Any, kernel: str):
    """What to hand to Pallas for the requested interpret mode."""
    if interpret is False or interpret is None:
        return False
    if interpret is True:
        # Splash passes `interpret` straight to pallas_call, where True selects the generic
        # (fastest) Pallas interpreter. Flash has no `interpret` argument: it can only be
        # interpreted through pltpu.force_tpu_interpret_mode, i.e. the TPU interpreter.
        return True if kernel == "splash" else pltpu.InterpretParams()
    return interpret  # an explicit pltpu.InterpretParams


def _static_mask(seq_len: int, window: int):
    """Causal; with `window` > 0 also local (a query's `window` keys ending at it), so splash
    skips the key blocks wholly outside the window."""
    if window > 0:
        return _splash_mask.LocalMask(shape=(seq_len, seq_len), window_size=(window - 1, 0), offset=0)
    return _splash_mask.CausalMask(shape=(seq_len, seq_len))


@functools.lru_cache(maxsize=64)
def _splash_kernel(seq_len: int, num_q_heads: int, bq: int, bkv: int, interpret, window: int = 0):
    """The splash kernel for one example ([H, T, E]); cached, its mask info is numpy-built."""
    mask = _splash_mask.MultiHeadMask([_static_mask(seq_len, window)] * num_q_heads)
    block_sizes = _splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    # The kernel object holds the mask-info arrays and outlives the call: keep them concrete
    # even when it is first built under a jit trace.
    with jax.ensure_compile_time_eval():
        return _splash.make_splash_mha(
            mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def _splash_bhte(q, k, v, seg, branch=None, *, bq, bkv, interpret, window=0):
    """q [B, H, T, E] (already scaled), k and v [B, K, T, E], seg and branch [B, T] int32.

    With `branch`, the tree mask by two merged calls (`attention_pallas_tree`).
    """
    _, h, t, _ = q.shape
    kernel = _splash_kernel(t, h, bq, bkv, interpret, window)
    if branch is not None:
        from polar_jax.models import attention_pallas_tree

        tree = attention_pallas_tree.make_tree_attention(kernel)
        operands, one_row = (q, k, v, seg, branch), tree
    else:
        operands = (q, k, v, seg)

        def one_row(q1, k1, v1, s1):
            return kernel(q1, k1, v1, segment_ids=_splash.SegmentIds(q=s1, kv=s1))

    if interpret is False or interpret is True:
        return jax.vmap(one_row)(*operands)
    # The TPU interpreter (InterpretParams) of jax 0.11.2 rejects a vmapped kernel whose
    # compiler params carry dimension_semantics (the batching rule adds a grid dimension:
    # "safe_zip() argument 1 has length 3 but argument 0 has length 4"): loop instead.
    return jax.lax.map(lambda row: one_row(*row), operands)


def _flash_bhte(q, k, v, seg, *, scale, bq, bkv, interpret):
    """q [B, H, T, E], k and v [B, K, T, E] (repeated to H heads here), seg [B, T] int32."""
    h, kv_heads = q.shape[1], k.shape[1]
    if kv_heads != h:  # repeat_kv: query head h reads kv head h // G
        k = jnp.repeat(k, h // kv_heads, axis=1)
        v = jnp.repeat(v, h // kv_heads, axis=1)
    block_sizes = _flash.BlockSizes(
        block_q=bq,
        block_k_major=bkv,
        block_k=bkv,
        block_b=1,
        block_q_major_dkv=bq,
        block_k_major_dkv=bkv,
        block_k_dkv=bkv,
        block_q_dkv=bq,
        block_k_major_dq=bkv,
        block_k_dq=bkv,
        block_q_dq=bq,
    )

    def call(q, k, v):
        return _flash.flash_attention(
            q,
            k,
            v,
            segment_ids=_flash.SegmentIds(q=seg, kv=seg),
            causal=True,
            sm_scale=scale,
            block_sizes=block_sizes,
        )

    if interpret is False:
        return call(q, k, v)
    return _under_tpu_interpret(call, interpret)(q, k, v)


def _under_tpu_interpret(fn, params):
    """`fn` traced under `pltpu.force_tpu_interpret_mode(params)`, its backward pass too.

    The context manager is read when a pallas_call is traced; backward kernels are traced
    later, when autodiff transposes, so a custom VJP re-enters it for the backward pass.
    """

    @jax.custom_vjp
    def wrapped(*args):
        with pltpu.force_tpu_interpret_mode(params):
            return fn(*args)

    def fwd(*args):
        with pltpu.force_tpu_interpret_mode(params):
            return jax.vjp(fn, *args)

    def bwd(vjp_fn, g):
        with pltpu.force_tpu_interpret_mode(params):
            return vjp_fn(g)

    wrapped.defvjp(fwd, bwd)
    return wrapped


def _check_shapes(q_bthe, k_bske, v_bske, segment_ids_bt, branch_ids_bt) -> None:
    """Raise ValueError unless q [B, T, H, E], k = v [B, T, K, E] with K | H, ids [B, T]."""
    if q_bthe.ndim != 4 or k_bske.ndim != 4 or v_bske.ndim != 4:
        raise ValueError(
            "pallas_attention expects q [B, T, H, E] and k, v [B, T, K, E]; got "
            f"{q_bthe.shape}, {k_bske.shape}, {v_bske.shape}"
        )
    b, t, h, e = q_bthe.shape
    if k_bske.shape != v_bske.shape:
        raise ValueError(f"k {k_bske.shape} and v {v_bske.shape} must have the same shape")
    if k_bske.shape[0] != b or k_bske.shape[1] != t or k_bske.shape[3] != e:
        raise ValueError(
            "pallas_attention is self-attention over one packed row: expected k, v "
            f"[{b}, {t}, K, {e}], got {k_bske.shape}"
        )
    kv_heads = k_bske.shape[2]
    if h % kv_heads:
        raise ValueError(f"query heads H={h} must be a multiple of kv heads K={kv_heads}")
    if segment_ids_bt.shape != (b, t):
        raise ValueError(f"segment_ids must be [B, T] = {(b, t)}, got {segment_ids_bt.shape}")
    if branch_ids_bt is not None and branch_ids_bt.shape != (b, t):
        raise ValueError(f"branch_ids must be [B, T] = {(b, t)}, got {branch_ids_bt.shape}")


def pallas_attention(
    q_bthe: jax.Array,
    k_bske: jax.Array,
    v_bske: jax.Array,
    segment_ids_bt: jax.Array,
    branch_ids_bt: jax.Array | None = None,
    *,
    window: int = 0,
    interpret: bool | Any = False,
    block_q: int | None = None,
    block_kv: int | None = None,
    kernel: Literal["auto", "splash", "flash"] = "auto",
) -> jax.Array:
    """Causal, segment-masked, grouped-query self-attention with a Pallas TPU kernel.

    Args:
        q_bthe: queries [B, T, H, E].
        k_bske, v_bske: keys and values [B, T, K, E]; H must be a multiple of K.
        segment_ids_bt: integer [B, T]; 0 is padding.
        branch_ids_bt: integer [B, T] or None: the shared-prefix layout's branches (0: a
            segment's prefix, 1, 2, ...: its suffixes; `models.attention`). Splash only.
        window: > 0 promises every segment spans at most `window` tokens of its row; splash
            then skips the key blocks outside it. A speed hint only: flash ignores it.
        interpret: run in Pallas interpret mode (CPU tests): True, or a
            `pltpu.InterpretParams` for the TPU interpreter (slower; simulates TPU memory,
            e.g. NaN-filled uninitialised buffers).
        block_q, block_kv: kernel tiles along the query / key sequence, multiples of 128
            dividing T. Default: the largest of 512, 256, 128 dividing T.
        kernel: "auto" (splash if this JAX has it, else flash), "splash" or "flash".

    Returns:
        [B, T, H, E] in the dtype of `q_bthe`.
    """
    _check_shapes(q_bthe, k_bske, v_bske, segment_ids_bt, branch_ids_bt)
    b, t, h, e = q_bthe.shape
    bq = _resolve_block("block_q", block_q, t)
    bkv = _resolve_block("block_kv", block_kv, t)

    if kernel == "auto":
        kernel = "splash" if HAS_SPLASH else "flash"
    if kernel not in ("splash", "flash"):
        raise ValueError(f"unknown kernel {kernel!r}")
    if not (HAS_SPLASH if kernel == "splash" else HAS_FLASH):
        raise RuntimeError(f"the Pallas {kernel} attention kernel is not in this JAX version")
    if branch_ids_bt is not None and kernel == "flash":
        raise NotImplementedError("shared-prefix rows (branch ids) need the splash kernel; flash has no tree mask")
    interpret = _interpret_value(interpret, kernel)

    dtype = q_bthe.dtype
    scale = 1.0 / math.sqrt(e)
    seg = segment_ids_bt.astype(jnp.int32)
    q = jnp.swapaxes(q_bthe, 1, 2)  # [B, H, T, E]
    k = jnp.swapaxes(k_bske, 1, 2).astype(dtype)  # [B, K, T, E]
    v = jnp.swapaxes(v_bske, 1, 2).astype(dtype)
    if kernel == "splash":
        # Splash has no softmax-scale argument: fold 1/sqrt(E) into q (multiplied in f32).
        q = (q.astype(jnp.float32) * scale).astype(dtype)
        branch = None if branch_ids_bt is None else branch_ids_bt.astype(jnp.int32)
        o = _splash_bhte(q, k, v, seg, branch, bq=bq, bkv=bkv, interpret=interpret, window=window)
    else:
        o = _flash_bhte(q, k, v, seg, scale=scale, bq=bq, bkv=bkv, interpret=interpret)
    return jnp.swapaxes(o, 1, 2).astype(dtype)


def sharded_pallas_attention(
    q_bthe: jax.Array,
    k_bske: jax.Array,
    v_bske: jax.Array,
    segment_ids_bt: jax.Array,
    branch_ids_bt: jax.Array | None = None,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
    batch_axes: str | Sequence[str] | None = ("data",),
    head_axis: str | None = None,
    **kwargs,
) -> jax.Array:
    """`pallas_attention` under `shard_map` on `mesh`; `kwargs` go to `pallas_attention`.

    B is split over `batch_axes`; with `head_axis`, H and K are both split over that axis
    (K must be divisible by its size; contiguous chunks keep the h // G pairing). T and E
    are never split; other mesh axes see replicated operands. `branch_ids_bt` (optional) is
    split like the segment ids.
    """
    if isinstance(batch_axes, str):
        batch_axes = (batch_axes,)
    batch = tuple(batch_axes) if batch_axes else None
    if batch is not None and len(batch) == 1:
        batch = batch[0]
    qkv_spec = P(batch, None, head_axis, None)
    operands = (q_bthe, k_bske, v_bske, segment_ids_bt)
    if branch_ids_bt is not None:
        operands += (branch_ids_bt,)
    return jax.shard_map(
        functools.partial(pallas_attention, **kwargs),
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec) + (P(batch, None),) * (len(operands) - 3),
        out_specs=qkv_spec,
        check_vma=False,
    )(*operands)
