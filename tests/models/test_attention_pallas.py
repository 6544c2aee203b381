"""The Pallas (splash / flash) attention back-end against a pure-jnp reference.

The TPU kernels run in Pallas interpret mode on CPU, which is slow, so sizes are minimal:
T = 256 with 128-blocks still exercises the multi-block online softmax and the causal
block skipping.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh

from polar_jax.models import attention_pallas as ap
from polar_jax.models.attention_pallas import pallas_attention

B, T, H, K = 2, 256, 4, 2

needs_splash = pytest.mark.skipif(not ap.HAS_SPLASH, reason="no splash attention in this JAX")
needs_flash = pytest.mark.skipif(not ap.HAS_FLASH, reason="no flash attention in this JAX")


def reference_attention(q, k, v, seg):
    """Masked softmax attention: causal, same segment, GQA (query head h reads kv head h // G)."""
    _, t, h, d = q.shape
    g = h // k.shape[2]
    k = jnp.repeat(k, g, axis=2).astype(jnp.float32)
    v = jnp.repeat(v, g, axis=2).astype(jnp.float32)
    logits = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k) / math.sqrt(d)
    i = jnp.arange(t)
    mask = (i[:, None] >= i[None, :])[None] & (seg[:, :, None] == seg[:, None, :])
    probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -1e30), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v).astype(q.dtype)


def packed_segments(b=B, t=T):
    """Rows packing 2 and 3 documents, then padding (segment id 0)."""
    seg = np.zeros((b, t), np.int32)
    seg[0, :50] = 1
    seg[0, 50 : t - 20] = 2
    if b > 1:
        seg[1, :30] = 1
        seg[1, 30:100] = 2
        seg[1, 100 : t - 5] = 3
    return jnp.asarray(seg)


def make_qkv(d, dtype, b=B, t=T, h=H, kv_heads=K, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, t, h, d)), dtype)
    k = jnp.asarray(r.normal(size=(b, t, kv_heads, d)), dtype)
    v = jnp.asarray(r.normal(size=(b, t, kv_heads, d)), dtype)
    return q, k, v


def assert_close_on_tokens(out, ref, seg, atol, rtol=0.0):
    """Compare non-padding positions; every output (padding too) must be finite."""
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all(), "outputs, padding included, must be finite"
    valid = np.asarray(seg) != 0
    np.testing.assert_allclose(out[valid], np.asarray(ref, np.float32)[valid], atol=atol, rtol=rtol)


def masked_loss(attn, seg, seed=1):
    """A scalar of the non-padding outputs, with random weights."""
    valid = (np.asarray(seg) != 0)[:, :, None, None]

    def loss(q, k, v):
        w = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), jnp.float32)
        return jnp.sum(jnp.where(valid, attn(q, k, v, seg), 0.0) * w)

    return loss


@needs_splash
@pytest.mark.parametrize("d", [64, 128])
def test_splash_f32_matches_reference(d):
    q, k, v = make_qkv(d, jnp.float32)
    seg = packed_segments()
    attn = jax.jit(lambda *x: pallas_attention(*x, interpret=True, block_q=128, block_kv=128))
    out = attn(q, k, v, seg)
    assert out.shape == q.shape and out.dtype == jnp.float32
    assert_close_on_tokens(out, reference_attention(q, k, v, seg), seg, atol=1e-5)


@needs_splash
def test_splash_bf16_matches_reference():
    q, k, v = make_qkv(128, jnp.bfloat16)
    seg = packed_segments()
    out = pallas_attention(q, k, v, seg, interpret=True)  # default blocks (256 here)
    assert out.dtype == jnp.bfloat16

    def f32(x):
        return x.astype(jnp.float32)

    ref = reference_attention(f32(q), f32(k), f32(v), seg)
    assert_close_on_tokens(out, ref, seg, atol=2e-2, rtol=2e-2)


@needs_splash
def test_splash_gradients_match_reference():
    q, k, v = make_qkv(64, jnp.float32, b=1, h=2, kv_heads=1)
    seg = packed_segments(b=1)

    def attn(*x):
        return pallas_attention(*x, interpret=True, block_q=128, block_kv=128)

    got = jax.jit(jax.grad(masked_loss(attn, seg), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(masked_loss(reference_attention, seg), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)


@needs_splash
def test_splash_tpu_interpreter():
    """The TPU interpreter (InterpretParams) simulates TPU memory, NaN-filled scratch included."""
    q, k, v = make_qkv(64, jnp.float32, t=128)
    seg = packed_segments(t=128)
    out = pallas_attention(q, k, v, seg, interpret=pltpu.InterpretParams())
    assert_close_on_tokens(out, reference_attention(q, k, v, seg), seg, atol=1e-5)


@needs_flash
def test_flash_fallback_matches_reference_with_grads():
    q, k, v = make_qkv(64, jnp.float32, t=128, h=2, kv_heads=1)
    seg = packed_segments(t=128)

    def attn(*x):
        return pallas_attention(*x, interpret=True, kernel="flash")

    out = jax.jit(attn)(q, k, v, seg)
    assert_close_on_tokens(out, reference_attention(q, k, v, seg), seg, atol=1e-5)
    got = jax.jit(jax.grad(masked_loss(attn, seg), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(masked_loss(reference_attention, seg), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)


@needs_splash
def test_kernel_first_built_under_jit_is_reusable_eagerly():
    # The splash kernel, with its mask-info arrays, is cached across calls: built inside a
    # jit trace, it must not hold tracers.
    ap._splash_kernel.cache_clear()
    q, k, v = make_qkv(64, jnp.float32, b=1, t=128, h=2, kv_heads=1)
    seg = jnp.ones((1, 128), jnp.int32)
    under_jit = jax.jit(lambda *x: pallas_attention(*x, interpret=True))(q, k, v, seg)
    eager = pallas_attention(q, k, v, seg, interpret=True)
    np.testing.assert_allclose(np.asarray(under_jit), np.asarray(eager), atol=1e-6)
    assert_close_on_tokens(eager, reference_attention(q, k, v, seg), seg, atol=1e-5)


@needs_splash
def test_sharded_over_batch_and_heads_with_shard_map():
    devices = jax.devices()
    if len(devices) >= 4:  # conftest gives 8 CPU devices: data 2 x model 2
        mesh, head_axis = Mesh(np.array(devices[:4]).reshape(2, 2), ("data", "model")), "model"
    else:
        mesh, head_axis = Mesh(np.array(devices[:1]), ("data",)), None
    q, k, v = make_qkv(64, jnp.float32, t=128)
    seg = packed_segments(t=128)

    def attn(*x):
        return ap.sharded_pallas_attention(*x, mesh=mesh, batch_axes="data", head_axis=head_axis, interpret=True)

    out = jax.jit(attn)(q, k, v, seg)
    assert_close_on_tokens(out, reference_attention(q, k, v, seg), seg, atol=1e-5)


def test_default_block_sizes():
    assert ap.default_block_size(128) == 128
    assert ap.default_block_size(256) == 256
    assert ap.default_block_size(384) == 128
    assert ap.default_block_size(768) == 256
    assert ap.default_block_size(4096) == 512


def test_shape_errors_name_the_requirement():
    q, k, v = make_qkv(64, jnp.float32, b=1, t=200)
    with pytest.raises(ValueError, match="multiple of 128"):
        pallas_attention(q, k, v, jnp.ones((1, 200), jnp.int32), interpret=True)
    q, k, v = make_qkv(64, jnp.float32, b=1, t=384)
    seg = jnp.ones((1, 384), jnp.int32)
    with pytest.raises(ValueError, match="not a multiple of block_q=256"):
        pallas_attention(q, k, v, seg, interpret=True, block_q=256)
    q, k, v = make_qkv(64, jnp.float32, b=1, t=384, h=4, kv_heads=3)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        pallas_attention(q, k, v, seg, interpret=True)
