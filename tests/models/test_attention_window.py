"""The windowed XLA path (`attention.windowed_attention`) computes only the keys within the window
and still equals the whole-row reference, values and gradients, on rows of short shared-prefix
segments, whatever the tile; it is used only when it computes fewer keys than the row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.models import attention


def _rows(b: int, t: int, longest: int, seed: int = 0):
    """Rows of shared-prefix segments (prefix, two suffixes) of at most `longest` tokens, padding at the end."""
    rng = np.random.default_rng(seed)
    seg, pos, branch = (np.zeros((b, t), np.int32) for _ in range(3))
    for r in range(b):
        at, s = 0, 1
        while True:
            n_prefix, n1, n2 = (
                rng.integers(0, longest // 2),
                rng.integers(1, longest // 4),
                rng.integers(1, longest // 4),
            )
            if at + n_prefix + n1 + n2 > t - 5:
                break
            for first, n, br, start in (
                (0, n_prefix, 0, at),
                (n_prefix, n1, 1, at + n_prefix),
                (n_prefix, n2, 2, at + n_prefix + n1),
            ):
                seg[r, start : start + n], branch[r, start : start + n] = s, br
                pos[r, start : start + n] = first + np.arange(n)
            at, s = at + n_prefix + n1 + n2, s + 1
    return jnp.asarray(seg), jnp.asarray(pos), jnp.asarray(branch)


@pytest.mark.parametrize("t,longest,block", [(300, 90, None), (300, 90, 64), (256, 129, 128), (200, 60, 16)])
def test_windowed_attention_equals_the_whole_row_values_and_gradients(t, longest, block):
    b, h, k, e = 2, 4, 2, 8
    seg, pos, branch = _rows(b, t, longest)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, h, e))
    kv = [jax.random.normal(key, (b, t, k, e)) for key in keys[1:]]
    real = np.asarray(seg != 0)[:, :, None, None]

    def reference(q, k, v):
        mask = attention.attention_mask(seg, seg, pos, pos, branch, branch)
        return (attention.xla_attention(q, k, v, mask) * real).sum()

    def windowed(q, k, v):
        return (attention.windowed_attention(q, k, v, seg, pos, branch, longest, block=block) * real).sum()

    out_ref = attention.xla_attention(q, *kv, attention.attention_mask(seg, seg, pos, pos, branch, branch))
    out_win = attention.windowed_attention(q, *kv, seg, pos, branch, longest, block=block)
    np.testing.assert_allclose(np.asarray(out_win) * real, np.asarray(out_ref) * real, rtol=1e-5, atol=1e-6)
    grads_ref = jax.grad(reference, argnums=(0, 1, 2))(q, *kv)
    grads_win = jax.grad(windowed, argnums=(0, 1, 2))(q, *kv)
    for g_win, g_ref in zip(grads_win, grads_ref):
        np.testing.assert_allclose(g_win, g_ref, rtol=1e-5, atol=1e-5)


def test_a_window_too_short_for_a_segment_changes_the_result():
    """The window is a promise the packer keeps: broken, the windowed path really drops keys."""
    seg, pos, branch = _rows(1, 256, 120, seed=3)
    q = jax.random.normal(jax.random.key(1), (1, 256, 2, 8))
    kv = jax.random.normal(jax.random.key(2), (1, 256, 2, 8))
    full = attention.xla_attention(q, kv, kv, attention.attention_mask(seg, seg, pos, pos, branch, branch))
    short = attention.windowed_attention(q, kv, kv, seg, pos, branch, 16, block=16)
    assert not np.allclose(np.asarray(short)[np.asarray(seg != 0)], np.asarray(full)[np.asarray(seg != 0)], atol=1e-3)


def test_the_tile_minimises_the_keys_per_query():
    assert attention.window_block(134) == 16 and attention.window_keys(134, 512) == 160
    assert attention.window_keys(257, 1024) == 272  # 17 tiles of 16
    for window in range(2, 600):
        best = min((-(-(window - 1) // c) + 1) * c for c in attention.WINDOW_BLOCKS)
        assert attention.window_keys(window, 4096) == best >= window
    assert attention.window_keys(0, 512) == 512 and attention.window_keys(600, 512) == 512
    assert attention.window_keys(500, 512) == 512  # as many keys as the row: the whole-row path is used
