"""TPU attention back-end built on the Pallas splash / flash attention kernels.

Semantics (identical to the XLA reference in ``polar_jax.models.attention``):

* ``q`` is ``[B, T, H, D]``, ``k`` and ``v`` are ``[B, T, K, D]`` with
  ``H = K * G`` (grouped-query attention; query head ``h`` reads kv head
  ``h // G``, the Hugging Face ``repeat_kv`` convention).
* Self-attention over one packed row: causal by index within the row, and a
  query attends only to keys carrying the same segment id. Segment id 0 marks
  padding; padding outputs are don't-care but finite (every query can at least
  see itself, so no softmax row is empty).
* Softmax scale ``1/sqrt(D)``, softmax statistics in float32, output dtype is
  the dtype of ``q``.

Kernels: splash attention (``make_splash_mha`` with a ``CausalMask`` and
``SegmentIds``; it supports GQA natively, kv head ``h // G``) is preferred;
the older ``flash_attention`` kernel (which needs equal head counts, so kv is
repeated) is the fallback and can also be chosen with ``kernel="flash"``.

Both are Mosaic (TPU) kernels. Off TPU they only run in Pallas interpret mode
(``interpret=True``), which is meant for tests on CPU; it is slow.

On a multi-device TPU mesh the kernel must run inside ``shard_map``: a Pallas
TPU call is an opaque custom call that the SPMD partitioner cannot split (at
best it gathers the operands onto every device). ``sharded_pallas_attention``
wraps the call accordingly (batch sharded over the data axes, heads optionally
over one model axis).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

try:  # splash attention: preferred kernel
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

try:  # flash attention: fallback kernel
  from jax.experimental.pallas.ops.tpu import flash_attention as _flash
  HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the installed JAX
  _flash = None
  HAS_FLASH = False

__all__ = [
    "HAS_FLASH",
    "HAS_SPLASH",
    "MIN_BLOCK",
    "default_block_size",
    "pallas_attention",
    "sharded_pallas_attention",
]

# The kernels tile the kv sequence over the 128 TPU vector lanes, so every
# block (and therefore T) must be a multiple of 128.
MIN_BLOCK = 128
# Default block-size preference for long rows (largest that divides T).
_DEFAULT_BLOCKS = (512, 256, 128)

Interpret = bool | Any  # bool or a pltpu.InterpretParams instance


def default_block_size(seq_len: int) -> int:
  """Largest of 512/256/128 that divides ``seq_len`` (requires T % 128 == 0)."""
  _check_seq_len(seq_len)
  for b in _DEFAULT_BLOCKS:
    if seq_len % b == 0:
      return b
  raise AssertionError("unreachable")  # pragma: no cover


def _check_seq_len(seq_len: int) -> None:
  if seq_len % MIN_BLOCK:
    raise ValueError(
        f"pallas_attention requires the sequence length T to be a multiple of "
        f"{MIN_BLOCK} (the minimum kernel block size, one TPU lane tile); got "
        f"T={seq_len}. Pad the packed rows to a multiple of {MIN_BLOCK}."
    )


def _resolve_block(name: str, block: int | None, seq_len: int) -> int:
  _check_seq_len(seq_len)
  if block is None:
    return default_block_size(seq_len)
  if block <= 0 or block % MIN_BLOCK:
    raise ValueError(
        f"pallas_attention: {name}={block} must be a positive multiple of "
        f"{MIN_BLOCK}."
    )
  if seq_len % block:
    raise ValueError(
        f"pallas_attention requires the sequence length T to be a multiple of "
        f"the block size: T={seq_len} is not a multiple of {name}={block}."
    )
  return block


def _interpret_value(interpret: Interpret, kernel: str):
  """What to hand to pallas for the requested interpret mode."""
  if interpret is False or interpret is None:
    return False
  if interpret is True:
    # Splash takes `interpret` straight through to pallas_call, where `True`
    # selects the generic (fast) Pallas interpreter. Flash has no `interpret`
    # argument, so it can only be run through the TPU interpreter
    # (pltpu.force_tpu_interpret_mode with InterpretParams).
    return True if kernel == "splash" else pltpu.InterpretParams()
  return interpret  # an explicit pltpu.InterpretParams


@functools.lru_cache(maxsize=64)
def _splash_kernel(seq_len: int, num_q_heads: int, bq: int, bkv: int,
                   interpret):
  mask = _splash_mask.MultiHeadMask(
      [_splash_mask.CausalMask(shape=(seq_len, seq_len))] * num_q_heads
  )
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
  # The mask info is built from numpy; make sure it is concrete even when the
  # first call happens under a jit trace (the kernel is cached across traces).
  with jax.ensure_compile_time_eval():
    return _splash.make_splash_mha(
        mask,
        block_sizes=block_sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _splash_bhtd(q, k, v, seg, *, bq, bkv, interpret):
  """q [B,H,T,D] (already scaled), k/v [B,K,T,D], seg [B,T] int32."""
  _, h, t, _ = q.shape
  kern = _splash_kernel(t, h, bq, bkv, interpret)

  def one(q1, k1, v1, s1):
    return kern(q1, k1, v1, segment_ids=_splash.SegmentIds(q=s1, kv=s1))

  if interpret is False or interpret is True:
    return jax.vmap(one)(q, k, v, seg)
  # The TPU interpreter (InterpretParams) of jax 0.11.2 does not support a
  # vmapped kernel whose compiler params carry dimension_semantics (the
  # batching rule adds a grid dimension the interpreter does not expect:
  # "safe_zip() argument 1 has length 3 but argument 0 has length 4"), so
  # loop over the batch instead.
  return jax.lax.map(lambda a: one(*a), (q, k, v, seg))


def _flash_bhtd(q, k, v, seg, *, scale, bq, bkv, interpret):
  """q [B,H,T,D], k/v [B,K,T,D] (repeated to H heads here), seg [B,T]."""
  h, kh = q.shape[1], k.shape[1]
  if kh != h:
    # repeat_kv: query head h reads kv head h // G.
    k = jnp.repeat(k, h // kh, axis=1)
    v = jnp.repeat(v, h // kh, axis=1)
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
        q, k, v,
        segment_ids=_flash.SegmentIds(q=seg, kv=seg),
        causal=True,
        sm_scale=scale,
        block_sizes=block_sizes,
    )

  if interpret is False:
    return call(q, k, v)
  return _under_tpu_interpret(call, interpret)(q, k, v)


def _under_tpu_interpret(fn, params):
  """``fn`` traced under ``pltpu.force_tpu_interpret_mode(params)``, grads too.

  The flash kernel has no ``interpret`` argument, so interpret mode can only be
  switched on by the context manager, which is consulted when a pallas_call is
  traced. Its backward kernels are traced later (when autodiff transposes), so
  the context manager is re-entered in a custom_vjp backward rule.
  """

  @jax.custom_vjp
  def wrapped(*args):
    with pltpu.force_tpu_interpret_mode(params):
      return fn(*args)

  def fwd(*args):
    with pltpu.force_tpu_interpret_mode(params):
      out, vjp_fn = jax.vjp(fn, *args)
    return out, vjp_fn

  def bwd(vjp_fn, g):
    with pltpu.force_tpu_interpret_mode(params):
      return vjp_fn(g)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def pallas_attention(
    q_bthd: jax.Array,
    k_bshd: jax.Array,
    v_bshd: jax.Array,
    segment_ids_bt: jax.Array,
    *,
    interpret: Interpret = False,
    block_q: int | None = None,
    block_kv: int | None = None,
    kernel: Literal["auto", "splash", "flash"] = "auto",
) -> jax.Array:
  """Causal, segment-masked GQA self-attention with a Pallas TPU kernel.

  Args:
    q_bthd: queries ``[B, T, H, D]``.
    k_bshd: keys ``[B, T, K, D]``; ``H`` must be a multiple of ``K``.
    v_bshd: values ``[B, T, K, D]``.
    segment_ids_bt: integer ``[B, T]``; 0 = padding.
    interpret: run the kernel in Pallas interpret mode (CPU tests). ``True``
      or a ``pltpu.InterpretParams`` (TPU interpreter, slower but simulates
      TPU memory, e.g. NaN-filled uninitialised buffers).
    block_q, block_kv: kernel tile sizes along the query / key sequence;
      multiples of 128 dividing ``T``. Default: the largest of 512/256/128
      dividing ``T``.
    kernel: "auto" (splash if available, else flash), "splash" or "flash".

  Returns:
    ``[B, T, H, D]`` in ``q_bthd.dtype``.

  Raises:
    ValueError: on bad shapes, ``T`` not a multiple of 128 / of the block
      sizes.
  """
  if q_bthd.ndim != 4 or k_bshd.ndim != 4 or v_bshd.ndim != 4:
    raise ValueError(
        "pallas_attention expects q [B,T,H,D] and k, v [B,T,K,D]; got "
        f"{q_bthd.shape}, {k_bshd.shape}, {v_bshd.shape}"
    )
  b, t, h, d = q_bthd.shape
  if k_bshd.shape != v_bshd.shape:
    raise ValueError(f"k {k_bshd.shape} and v {v_bshd.shape} must match")
  bk, s, kh, dk = k_bshd.shape
  if bk != b or s != t or dk != d:
    raise ValueError(
        "pallas_attention is self-attention over one packed row: expected k/v "
        f"[{b}, {t}, K, {d}], got {k_bshd.shape}"
    )
  if h % kh:
    raise ValueError(f"query heads H={h} must be a multiple of kv heads K={kh}")
  if segment_ids_bt.shape != (b, t):
    raise ValueError(
        f"segment_ids must be [B, T] = {(b, t)}, got {segment_ids_bt.shape}"
    )
  bq = _resolve_block("block_q", block_q, t)
  bkv = _resolve_block("block_kv", block_kv, t)

  if kernel == "auto":
    kernel = "splash" if HAS_SPLASH else "flash"
  if kernel == "splash" and not HAS_SPLASH:
    raise RuntimeError("splash attention is not available in this JAX version")
  if kernel == "flash" and not HAS_FLASH:
    raise RuntimeError("flash attention is not available in this JAX version")
  if kernel not in ("splash", "flash"):
    raise ValueError(f"unknown kernel {kernel!r}")
  interp = _interpret_value(interpret, kernel)

  out_dtype = q_bthd.dtype
  scale = 1.0 / math.sqrt(d)
  seg = segment_ids_bt.astype(jnp.int32)
  # [B,T,H,D] -> [B,H,T,D]
  q = jnp.swapaxes(q_bthd, 1, 2)
  k = jnp.swapaxes(k_bshd, 1, 2).astype(out_dtype)
  v = jnp.swapaxes(v_bshd, 1, 2).astype(out_dtype)

  if kernel == "splash":
    # Splash has no softmax-scale argument: fold 1/sqrt(D) into q (in f32).
    q = (q.astype(jnp.float32) * scale).astype(out_dtype)
    o = _splash_bhtd(q, k, v, seg, bq=bq, bkv=bkv, interpret=interp)
  else:
    o = _flash_bhtd(q, k, v, seg, scale=scale, bq=bq, bkv=bkv,
                    interpret=interp)
  return jnp.swapaxes(o, 1, 2).astype(out_dtype)


def sharded_pallas_attention(
    q_bthd: jax.Array,
    k_bshd: jax.Array,
    v_bshd: jax.Array,
    segment_ids_bt: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: str | Sequence[str] | None = ("data",),
    head_axis: str | None = None,
    **kwargs,
) -> jax.Array:
  """``pallas_attention`` under ``shard_map`` for a device mesh.

  The batch dimension is split over ``batch_axes`` and, if ``head_axis`` is
  given, both H and K are split over that axis (each shard keeps the
  ``h // G`` pairing because H and K are split into the same number of
  contiguous chunks; K must be divisible by the axis size). T and D are never
  sharded. Other mesh axes see replicated inputs. ``kwargs`` go to
  ``pallas_attention``.
  """
  if isinstance(batch_axes, str):
    batch_axes = (batch_axes,)
  batch = tuple(batch_axes) if batch_axes else None
  if batch is not None and len(batch) == 1:
    batch = batch[0]
  qkv_spec = P(batch, None, head_axis, None)
  seg_spec = P(batch, None)
  fn = functools.partial(pallas_attention, **kwargs)
  return jax.shard_map(
      fn,
      mesh=mesh,
      in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
      out_specs=qkv_spec,
      check_vma=False,
  )(q_bthd, k_bshd, v_bshd, segment_ids_bt)
