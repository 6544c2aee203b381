"""The Pallas splash back-end on shared-prefix (tree) rows and with the attention window: the same
outputs and gradients as the XLA reference under `attention_mask`, in Pallas interpret mode.

Rows hold groups (one segment each: a prefix, branch 0, then 1 to 8 candidate suffixes, branches
1, 2, ...), empty prefixes included, then padding. Sizes are small: interpret mode is slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from polar_jax.models import attention as A
from polar_jax.models import attention_pallas as ap
from polar_jax.models import attention_pallas_tree as tree

pytestmark = pytest.mark.skipif(not ap.HAS_SPLASH, reason="no splash attention in this JAX")

H, K, E = 4, 2, 128
TOL = {"rtol": 1e-5, "atol": 1e-5}


def shared_rows(b: int, t: int, seed: int, max_span: int | None = None):
    """(segment, branch, position) [B, T] int32 of random groups in the shared layout, padded at the end.

    Each group: a prefix of 0..24 tokens (the first group of row 0 has none), then 1 to 8 suffixes
    of 1..12 tokens; groups longer than `max_span` tokens are not laid out (the window promise).
    """
    rng = np.random.default_rng(seed)
    segment, branch, position = (np.zeros((b, t), np.int32) for _ in range(3))
    for row in range(b):
        at, seg = 0, 0
        while True:
            prefix = 0 if (row == 0 and seg == 0) else int(rng.integers(0, 25))
            suffixes = rng.integers(1, 13, int(rng.integers(1, 9)))
            span = prefix + int(suffixes.sum())
            if at + span > t - 10 or (max_span is not None and span > max_span):
                break
            seg += 1
            segment[row, at : at + span] = seg
            position[row, at : at + prefix] = np.arange(prefix)
            at += prefix
            for number, length in enumerate(suffixes, start=1):
                branch[row, at : at + length] = number
                position[row, at : at + length] = prefix + np.arange(length)
                at += length
    return segment, branch, position


def random_qkv(b: int, t: int, seed: int = 0):
    """Float32 q [B, T, H, E], k and v [B, T, K, E] from a seeded normal."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, H, E)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, K, E)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, K, E)), jnp.float32)
    return q, k, v


def reference(q, k, v, segment, branch, position):
    """The XLA reference under the full tree mask."""
    seg, br, pos = map(jnp.asarray, (segment, branch, position))
    return A.xla_attention(q, k, v, A.attention_mask(seg, seg, pos, pos, br, br))


def weighted_loss(attn, segment, seed=1):
    """A scalar of the real tokens' outputs with random weights: its gradients test the backward."""
    valid = (np.asarray(segment) != 0)[:, :, None, None]

    def loss(q, k, v):
        w = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), jnp.float32)
        return jnp.sum(jnp.where(valid, attn(q, k, v), 0.0) * w)

    return loss


def assert_matches_reference(attn, q, k, v, segment, branch, position):
    """Outputs on real tokens (all finite) and gradients w.r.t. q, k, v equal the reference's."""
    ref = lambda q, k, v: reference(q, k, v, segment, branch, position)  # noqa: E731
    out = np.asarray(attn(q, k, v))
    assert np.isfinite(out).all()
    valid = segment != 0
    np.testing.assert_allclose(out[valid], np.asarray(ref(q, k, v))[valid], **TOL)
    grads = jax.grad(weighted_loss(attn, segment), argnums=(0, 1, 2))(q, k, v)
    grads_ref = jax.grad(weighted_loss(ref, segment), argnums=(0, 1, 2))(q, k, v)
    for name, g, g_ref in zip("qkv", grads, grads_ref, strict=True):
        assert np.isfinite(np.asarray(g)).all(), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), err_msg=f"d{name}", **TOL)


def test_rows_have_empty_and_shared_prefixes_and_padding():
    segment, branch, position = shared_rows(2, 256, seed=0)
    assert (segment[:, -10:] == 0).all()
    first = segment[0] == 1
    assert (branch[0][first] > 0).all()  # row 0's first group: an empty prefix
    assert ((branch == 0) & (segment > 0)).any()  # some group shares a non-empty prefix
    assert branch.max() >= 2 and segment.max() >= 2


def test_tree_ids_split_the_mask_into_two_disjoint_sets():
    segment, branch, position = shared_rows(1, 256, seed=3)
    ids_a, ids_b = tree.tree_segment_ids(jnp.asarray(segment[0]), jnp.asarray(branch[0]))
    causal = np.tril(np.ones((256, 256), bool))
    seen_a = (np.asarray(ids_a.q)[:, None] == np.asarray(ids_a.kv)[None]) & causal
    seen_b = (np.asarray(ids_b.q)[:, None] == np.asarray(ids_b.kv)[None]) & causal
    seg, br, pos = (jnp.asarray(x) for x in (segment, branch, position))
    mask = np.asarray(A.attention_mask(seg, seg, pos, pos, br, br))[0]
    real = segment[0] != 0
    assert not (seen_a & seen_b).any()
    np.testing.assert_array_equal((seen_a | seen_b)[real], mask[real])


def test_merge_ignores_a_set_without_keys():
    o_a, o_b = jnp.ones((1, 2, 3)), jnp.full((1, 2, 3), 5.0)
    lse_a = jnp.array([[0.5, 2.0]])
    lse_b = jnp.array([[-0.7 * float(jnp.finfo(jnp.float32).max), 2.0]])
    o, lse = tree.merge_partial_attention(o_a, lse_a, o_b, lse_b)
    np.testing.assert_allclose(np.asarray(o[0, 0]), 1.0)
    np.testing.assert_allclose(np.asarray(o[0, 1]), 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lse), [[0.5, 2.0 + np.log(2.0)]], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("b", "t", "seed"), [(1, 256, 0), (2, 384, 1)])
def test_tree_outputs_and_gradients_match_reference(b, t, seed):
    segment, branch, position = shared_rows(b, t, seed)
    q, k, v = random_qkv(b, t, seed)
    seg, br = jnp.asarray(segment), jnp.asarray(branch)

    def attn(q, k, v):
        return ap.pallas_attention(q, k, v, seg, br, interpret=True, block_q=128, block_kv=128)

    assert_matches_reference(attn, q, k, v, segment, branch, position)


@pytest.mark.slow
def test_window_with_and_without_branches_matches_reference():
    t, window = 384, 100
    segment, branch, position = shared_rows(1, t, seed=2, max_span=window)
    q, k, v = random_qkv(1, t, seed=2)
    seg, br = jnp.asarray(segment), jnp.asarray(branch)

    def tree_attn(q, k, v):
        return ap.pallas_attention(q, k, v, seg, br, window=window, interpret=True, block_q=128, block_kv=128)

    assert_matches_reference(tree_attn, q, k, v, segment, branch, position)
    # Without branches: each (segment, branch) run is its own segment, positions by row index.
    runs = np.asarray(tree.tree_segment_ids(seg[0], br[0])[0].q)[None] * (segment != 0)
    index = np.broadcast_to(np.arange(t, dtype=np.int32), (1, t))
    out = ap.pallas_attention(q, k, v, jnp.asarray(runs), window=window, interpret=True, block_q=128, block_kv=128)
    want = reference(q, k, v, runs, np.zeros_like(runs), index)
    np.testing.assert_allclose(np.asarray(out)[runs != 0], np.asarray(want)[runs != 0], **TOL)


def test_window_skips_key_blocks_outside_it():
    full = ap._splash_kernel(512, 1, 128, 128, True, 0)
    local = ap._splash_kernel(512, 1, 128, 128, True, 100)
    blocks = lambda kernel: int(np.count_nonzero(np.asarray(kernel.fwd_mask_info.block_mask)))  # noqa: E731
    assert blocks(full) == 10  # the causal lower triangle of 4 x 4 blocks
    assert blocks(local) == 7  # the diagonal and the block before it


def test_flash_refuses_branches():
    segment, branch, _ = shared_rows(1, 256, seed=0)
    q, k, v = random_qkv(1, 256)
    with pytest.raises(NotImplementedError, match="splash"):
        ap.pallas_attention(q, k, v, jnp.asarray(segment), jnp.asarray(branch), interpret=True, kernel="flash")


@pytest.mark.slow
def test_attend_with_pallas_takes_branches_and_window():
    t, window = 256, 90
    segment, branch, position = shared_rows(1, t, seed=4, max_span=window)
    q, k, v = random_qkv(1, t, seed=4)
    seg, br, pos = (jnp.asarray(x) for x in (segment, branch, position))

    def attn(q, k, v):
        return A.attend(
            q,
            k,
            v,
            q_segment_bt=seg,
            kv_segment_bs=seg,
            q_pos_bt=pos,
            kv_pos_bs=pos,
            q_branch_bt=br,
            kv_branch_bs=br,
            impl="pallas",
            window=window,
        )

    assert_matches_reference(attn, q, k, v, segment, branch, position)


@pytest.mark.slow
def test_sharded_tree_splits_branch_ids_like_segment_ids():
    devices = jax.devices()
    if len(devices) < 4:
        pytest.skip("needs 4 devices (conftest simulates 8 CPU devices)")
    mesh = Mesh(np.array(devices[:4]).reshape(2, 2), ("data", "model"))
    segment, branch, position = shared_rows(2, 128, seed=5)
    q, k, v = random_qkv(2, 128, seed=5)
    seg, br = jnp.asarray(segment), jnp.asarray(branch)

    def attn(q, k, v):
        return ap.sharded_pallas_attention(
            q, k, v, seg, br, mesh=mesh, batch_axes="data", head_axis="model", interpret=True
        )

    assert_matches_reference(jax.jit(attn), q, k, v, segment, branch, position)


@pytest.mark.slow
def test_train_loss_and_gradients_on_the_pallas_path_equal_the_unshared_xla_step():
    import dataclasses

    from polar_jax.data import packing
    from polar_jax.models import transformer
    from polar_jax.models.config import ModelConfig
    from polar_jax.train import step as steps

    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        heads=("reward",),
        init_std=0.1,
        dtype="float32",
    )
    rng = np.random.default_rng(2)
    pairs = []
    for i in range(6):
        prefix = list(rng.integers(1, 64, int(rng.integers(0, 40))))
        chosen, rejected = (
            np.array(prefix + list(rng.integers(1, 64, int(rng.integers(1, 30)))), np.int32) for _ in "cr"
        )
        pairs.append({"chosen": chosen, "rejected": rejected, "record_index": i})
    params = transformer.init_params(cfg, jax.random.key(0))

    def loss_and_grads(model_cfg, shared, window):
        batches = packing.pack_pairs(pairs, batch_size=4, seq_len=256, max_pairs_per_row=4, shared_prefix=shared)
        grad_fn = jax.grad(steps.loss_sums, has_aux=True)
        results = [
            grad_fn(params, {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}, model_cfg, 0.0, window) for b in batches
        ]
        grads = jax.tree.map(lambda *g: sum(g), *[r[0] for r in results])
        return sum(float(r[1]["loss_sum"]) for r in results), grads

    loss_ref, grads_ref = loss_and_grads(cfg, shared=False, window=0)
    loss, grads = loss_and_grads(dataclasses.replace(cfg, attention_impl="pallas"), shared=True, window=70)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-6)
