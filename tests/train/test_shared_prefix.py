"""The shared-prefix layout computes exactly what the unshared one does (the reference): the same
rewards, losses and gradients, a suffix never sees its sibling, and the attention window (which
computes only that far back) changes nothing while every segment fits it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.data import batch as contract
from polar_jax.data import packing
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.train import objectives
from polar_jax.train import step as steps

CFG = ModelConfig(
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


def _pairs(n: int, seed: int = 0, prefix=(0, 40), suffix=(1, 30)) -> list[dict]:
    """Pairs with a random common prefix (0 included) and random suffixes (1 token included)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shared = list(rng.integers(1, 64, rng.integers(*prefix)))
        chosen = shared + list(rng.integers(1, 64, rng.integers(*suffix)))
        rejected = shared + list(rng.integers(1, 64, rng.integers(*suffix)))
        out.append({"chosen": np.array(chosen, np.int32), "rejected": np.array(rejected, np.int32), "record_index": i})
    return out


def _batches(pairs, shared: bool, seq_len: int = 256, pairs_per_row: int = 4) -> list[dict]:
    return packing.pack_pairs(
        pairs, batch_size=4, seq_len=seq_len, max_pairs_per_row=pairs_per_row, shared_prefix=shared
    )


def _rewards_by_record(params, batches, window: int = 0) -> dict[int, tuple[float, float]]:
    out = {}
    for batch in batches:
        result = T.forward(
            CFG,
            params,
            batch["tokens_bt"],
            batch["positions_bt"],
            batch["segment_ids_bt"],
            branch_ids_bt=batch["branch_ids_bt"],
            attention_window=window,
        )
        chosen_bp, rejected_bp = objectives.pair_rewards(result.reward_bt, batch["reward_index_bp2"])
        for r, p in zip(*np.nonzero(batch["pair_mask_bp"])):
            out[int(batch["record_index_bp"][r, p])] = (float(chosen_bp[r, p]), float(rejected_bp[r, p]))
    return out


@pytest.fixture(scope="module")
def params():
    return T.init_params(CFG, jax.random.key(0))


def test_the_shared_layout_holds_each_pair_once_and_fewer_tokens():
    pairs = _pairs(40)
    shared, unshared = _batches(pairs, True), _batches(pairs, False)
    for batch in shared + unshared:
        contract.check_batch(batch)
    back = {u["record_index"]: u for b in shared for u in packing.unpack_batch(b)}
    assert sorted(back) == list(range(40))
    for i, pair in enumerate(pairs):
        np.testing.assert_array_equal(back[i]["chosen"], pair["chosen"])
        np.testing.assert_array_equal(back[i]["rejected"], pair["rejected"])
    tokens = [sum(int(np.count_nonzero(b["segment_ids_bt"])) for b in bs) for bs in (shared, unshared)]
    expected = sum(packing.pair_tokens(p, True) for p in pairs), sum(packing.pair_tokens(p, False) for p in pairs)
    assert tuple(tokens) == expected and tokens[0] < tokens[1]


def test_shared_prefix_length_leaves_each_sequence_its_reward_token():
    assert contract.shared_prefix_length([1, 2, 3, 4], [1, 2, 5]) == 2
    assert contract.shared_prefix_length([1, 2, 3], [1, 2, 3]) == 2  # identical: the last token stays a suffix
    assert contract.shared_prefix_length([7], [7, 8]) == 0
    assert contract.shared_prefix_length([1, 2], [3, 2]) == 0


@pytest.mark.parametrize("window", [0, 70])
def test_shared_and_unshared_give_the_same_rewards(params, window):
    pairs = _pairs(24, seed=1)
    unshared = _rewards_by_record(params, _batches(pairs, False))
    shared = _rewards_by_record(params, _batches(pairs, True), window=window)
    assert sorted(shared) == sorted(unshared) == list(range(24))
    np.testing.assert_allclose(
        np.array([shared[i] for i in range(24)]), np.array([unshared[i] for i in range(24)]), rtol=1e-5, atol=1e-6
    )


def _loss_and_grads(params, batches, window=0):
    grad_fn = jax.grad(steps.loss_sums, has_aux=True)
    total = None
    loss = 0.0
    for batch in batches:
        grads, sums = grad_fn(params, {k: jnp.asarray(batch[k]) for k in steps.BATCH_KEYS}, CFG, 0.0, window)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        loss += float(sums["loss_sum"])
    return loss, total


def test_shared_and_unshared_give_the_same_loss_and_gradients(params):
    pairs = _pairs(16, seed=2)
    loss_u, grads_u = _loss_and_grads(params, _batches(pairs, False))
    loss_s, grads_s = _loss_and_grads(params, _batches(pairs, True), window=70)
    assert loss_s == pytest.approx(loss_u, rel=1e-5)
    for (path, g_u), g_s in zip(jax.tree_util.tree_leaves_with_path(grads_u), jax.tree.leaves(grads_s)):
        np.testing.assert_allclose(g_s, g_u, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_truncated_pairs_and_identical_candidates_stay_exact(params):
    """Sequences cut at a length (both end with a long shared prefix), and chosen == rejected."""
    rng = np.random.default_rng(3)
    shared = list(rng.integers(1, 64, 60))
    pairs = [
        {"chosen": np.array(shared + [5], np.int32), "rejected": np.array(shared + [9], np.int32), "record_index": 0},
        {"chosen": np.array(shared[:30], np.int32), "rejected": np.array(shared[:30], np.int32), "record_index": 1},
        {"chosen": np.array([3], np.int32), "rejected": np.array([4, 5], np.int32), "record_index": 2},
    ]
    unshared = _rewards_by_record(params, _batches(pairs, False, seq_len=128))
    got = _rewards_by_record(params, _batches(pairs, True, seq_len=128))
    np.testing.assert_allclose([got[i] for i in range(3)], [unshared[i] for i in range(3)], rtol=1e-5, atol=1e-6)
    assert got[1][0] == pytest.approx(got[1][1], rel=1e-5)  # identical candidates, the same reward


def test_a_suffix_never_sees_its_sibling(params):
    """Changing one pair's rejected suffix leaves its chosen reward, and every other pair's, bit-identical."""
    pairs = _pairs(8, seed=4, prefix=(5, 20), suffix=(3, 10))
    before = _rewards_by_record(params, _batches(pairs, True), window=40)
    changed = [dict(p) for p in pairs]
    rejected = changed[3]["rejected"].copy()
    rejected[-2] = (rejected[-2] % 63) + 1
    changed[3]["rejected"] = rejected
    after = _rewards_by_record(params, _batches(changed, True), window=40)
    assert after[3][0] == before[3][0]
    assert after[3][1] != before[3][1]
    assert all(after[i] == before[i] for i in range(8) if i != 3)


def test_a_pair_longer_than_the_window_is_refused_naming_its_source():
    with pytest.raises(packing.PairTooLongError, match=r"a\.jsonl:3: a segment of 50 tokens exceeds the attention"):
        packing.check_pair_fits(30, 20, 256, "a.jsonl:3", prefix_len=0, window=40)
    packing.check_pair_fits(30, 20, 256, "a.jsonl:3", prefix_len=None, window=40)  # unshared: segments of 30 and 20
