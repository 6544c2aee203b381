"""The train step: the same update on one device and on 8 simulated devices under data, fsdp,
tensor and mixed meshes; real sharding of parameters and optimiser state; gradient
accumulation; the non-finite guard."""

import functools

import jax
import numpy as np
import pytest

from polar_jax import parallel
from polar_jax.data.synthetic import SyntheticConfig, SyntheticTriplets
from polar_jax.models.config import ModelConfig
from polar_jax.train import step as S
from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
from polar_jax.train.state import create_state

MODEL = ModelConfig(
    vocab_size=128,
    d_model=32,
    num_layers=2,
    num_heads=8,
    num_kv_heads=4,
    head_dim=8,
    mlp_dim=64,
    heads=("reward",),
    init_std=0.1,
)
OPTIM = OptimConfig(lr=1e-3)
STEPS = 10


def one_pair_per_row(records, seq_len):
    """A batch in the pipeline's contract, one (chosen, rejected) pair per padded row."""
    n = len(records)
    batch = {
        "tokens_bt": np.zeros((n, seq_len), np.int32),
        "segment_ids_bt": np.zeros((n, seq_len), np.int32),
        "branch_ids_bt": np.zeros((n, seq_len), np.int32),
        "positions_bt": np.zeros((n, seq_len), np.int32),
        "reward_index_bp2": np.zeros((n, 1, 2), np.int32),
        "pair_mask_bp": np.ones((n, 1), bool),
    }
    for b, r in enumerate(records):
        at = 0
        for seg, ids in ((1, r["chosen"]), (2, r["rejected"])):
            batch["tokens_bt"][b, at : at + len(ids)] = ids
            batch["segment_ids_bt"][b, at : at + len(ids)] = seg
            batch["positions_bt"][b, at : at + len(ids)] = np.arange(len(ids))
            batch["reward_index_bp2"][b, 0, seg - 1] = at + len(ids) - 1
            at += len(ids)
    return batch


@pytest.fixture(scope="module")
def batches():
    source = SyntheticTriplets(SyntheticConfig(vocab_size=128), 32)
    return [one_pair_per_row([source[i] for i in range(k * 8, k * 8 + 8)], 200) for k in range(2)]


def run(mesh_axes, batches, devices=None, accum_steps=1):
    mesh = parallel.make_mesh(mesh_axes, devices)
    optimizer = make_optimizer(OPTIM, STEPS)
    state = create_state(MODEL, optimizer, jax.random.key(0), mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(
        functools.partial(
            S.train_step,
            model_cfg=MODEL,
            optimizer=optimizer,
            schedule=lr_schedule(OPTIM, STEPS),
            accum_steps=accum_steps,
        ),
        in_shardings=(shardings, parallel.batch_sharding(mesh)),
        out_shardings=(shardings, None),
    )
    losses = []
    with parallel.use_rules(mesh):
        for batch in batches:
            batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, ndim=v.ndim)) for k, v in batch.items()}
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def single(batches):
    return run({"data": 1}, batches, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def fsdp_run(batches):
    return run({"fsdp": 8}, batches)


@pytest.mark.parametrize("axes", [{"data": 8}, "fsdp", {"data": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_meshes_give_the_single_device_losses_and_parameters(request, batches, single, axes):
    state, losses = request.getfixturevalue("fsdp_run") if axes == "fsdp" else run(axes, batches)
    ref_state, ref_losses = single
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)  # float32; only reduction order differs
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_fsdp_really_shards_parameters_and_optimizer_state(fsdp_run):
    state, _ = fsdp_run
    for tree in (state.params, state.opt_state):
        leaves = [x for x in jax.tree.leaves(tree) if x.ndim > 0]
        total = sum(x.nbytes for x in leaves)
        per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
        assert per_device == total // 8


def test_accumulation_equals_the_full_batch(batches, single):
    _, losses = run({"data": 1}, batches, devices=jax.devices()[:1], accum_steps=4)
    np.testing.assert_allclose(losses, single[1], rtol=1e-5)


def test_non_finite_batch_is_skipped_and_counted(batches):
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    optimizer = make_optimizer(OPTIM, STEPS)
    state = create_state(MODEL, optimizer, jax.random.key(0), mesh)
    step = jax.jit(
        functools.partial(S.train_step, model_cfg=MODEL, optimizer=optimizer, schedule=lr_schedule(OPTIM, STEPS))
    )
    poisoned = jax.tree.map(lambda x: x, state)
    poisoned = poisoned.replace(params={**state.params, "reward_head": state.params["reward_head"] * np.nan})
    after, metrics = step(poisoned, batches[0])
    assert not bool(metrics["finite"]) and int(after.skipped) == 1 and int(after.bad_streak) == 1
    assert int(after.step) == 1
    for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(poisoned.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    good, metrics = step(state, batches[0])
    assert bool(metrics["finite"]) and int(good.bad_streak) == 0
