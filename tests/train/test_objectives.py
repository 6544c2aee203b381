"""The Bradley-Terry objective and the train step against numpy on fixed values."""

import jax.numpy as jnp
import numpy as np

from polar_jax.train import objectives
from polar_jax.train.optim import OptimConfig, lr_schedule


def test_loss_and_accuracy_equal_numpy_on_a_fixed_batch():
    reward_bt = np.array([[0.5, 2.0, -1.0, 0.3, 1.5, 0.0], [1.0, -0.5, 0.7, 0.2, 0.0, 9.9]], np.float32)
    index_bp2 = np.array([[[1, 2], [4, 3]], [[0, 2], [5, 5]]], np.int32)
    mask_bp = np.array([[True, True], [True, False]])
    chosen, rejected = objectives.pair_rewards(jnp.asarray(reward_bt), jnp.asarray(index_bp2))
    np.testing.assert_allclose(chosen, [[2.0, 1.5], [1.0, 9.9]], rtol=1e-7)
    np.testing.assert_allclose(rejected, [[-1.0, 0.3], [0.7, 9.9]], rtol=1e-7)
    for margin in (0.0, 0.5):
        loss_sum, sums = objectives.bradley_terry(chosen, rejected, mask_bp, margin)
        out = objectives.finalize(sums)
        diffs = np.array([3.0, 1.2, 0.3])  # the three real pairs
        expected = np.mean(np.log1p(np.exp(-(diffs - margin))))
        np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
        np.testing.assert_allclose(loss_sum, 3 * expected, rtol=1e-6)
    assert out["accuracy"] == 1.0 and out["pairs"] == 3
    np.testing.assert_allclose(out["chosen_reward"], (2.0 + 1.5 + 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(out["reward_margin"], 4.5 / 3, rtol=1e-6)


def test_accuracy_counts_ties_and_losses_as_wrong():
    chosen, rejected = jnp.array([[1.0, 0.0, -2.0]]), jnp.array([[0.0, 0.0, 1.0]])
    _, sums = objectives.bradley_terry(chosen, rejected, jnp.ones((1, 3), bool))
    np.testing.assert_allclose(float(objectives.finalize(sums)["accuracy"]), 1 / 3, rtol=1e-6)


def test_schedule_warms_up_then_decays_to_a_tenth():
    schedule = lr_schedule(OptimConfig(lr=1e-3), total_steps=100)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(3)), 1e-3, rtol=1e-6)  # 3% of 100 steps
    np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-5)
    assert float(schedule(50)) < 1e-3


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = lr_schedule(OptimConfig(lr=1e-3, warmup_fraction=0.0, final_lr_fraction=1.0), total_steps=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10)], [1e-3] * 3, rtol=1e-6)
    tiny = lr_schedule(OptimConfig(lr=1e-3, warmup_fraction=0.01), total_steps=10)  # 0.1 step rounds up to one
    assert float(tiny(0)) == 0.0
    np.testing.assert_allclose(float(tiny(1)), 1e-3, rtol=1e-6)
