"""reward.normalize and reward.clip (rft/rewards.py): each mode equals a numpy transcription on
random batches; the running moments over several batches equal numpy's mean / std of their
concatenation; the clip binds after the normalisation; nonsense combinations are refused by
config_checks; an RFT run with normalize="running" stopped by SIGTERM and resumed equals the
uninterrupted one (the moments are part of the checkpoint)."""

import logging
import signal

import jax
import numpy as np
import pytest

from polar_jax import config_checks
from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError
from polar_jax.io import models
from polar_jax.rft import rewards, trainer
from polar_jax.rft.defaults import base_config
from tests.rft.test_rft_loop import ITERATIONS, config_file, metrics, untimed  # noqa: F401 (a fixture)

EPS = rewards.NORMALIZE_EPS


def random_scores(rng, b, scale=3.0, shift=-1.0):
    return (rng.normal(size=b) * scale + shift).astype(np.float32)


def group_numpy(s, k):
    """A z-score within each group of k consecutive scores, unbiased std (GRPO's), eps added."""
    s = s.astype(np.float64).reshape(-1, k)
    mean = s.mean(axis=1, keepdims=True)
    std = np.sqrt(np.sum((s - mean) ** 2, axis=1, keepdims=True) / (k - 1))
    return ((s - mean) / (std + EPS)).reshape(-1)


@pytest.mark.parametrize("seed", range(5))
def test_each_mode_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    s = random_scores(rng, 4 * k)
    s[:k] = 0.75  # one group of equal scores
    np.testing.assert_array_equal(rewards.normalize_scores(s, "none"), s)
    np.testing.assert_allclose(rewards.normalize_scores(s, "batch"), (s - s.mean()) / (s.std() + 1e-6), rtol=1e-6)
    got = rewards.normalize_scores(s, "group", k)
    np.testing.assert_allclose(got, group_numpy(s, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:k], 0.0)  # a group of equal scores -> 0
    stats = rewards.update_moments(rewards.init_moments(), s)
    x = s.astype(np.float64)
    want = (x - x.mean()) / (np.std(x, ddof=1) + EPS)
    np.testing.assert_allclose(rewards.normalize_scores(s, "running", stats=stats), want, rtol=1e-12)


def test_running_moments_over_batches_equal_numpy_of_the_concatenation():
    rng = np.random.default_rng(0)
    batches = [
        random_scores(rng, n, scale, shift) for n, scale, shift in ((8, 1, 0), (3, 5, 10), (16, 0.1, -4), (1, 1, 2))
    ]
    stats = rewards.init_moments()
    for i, s in enumerate(batches):
        train_b, stats = rewards.training_scores(s, "running", (), 1, stats)
        seen = np.concatenate(batches[: i + 1]).astype(np.float64)
        assert int(stats["count"]) == seen.size
        np.testing.assert_allclose(float(stats["mean"]), seen.mean(), rtol=1e-12)
        np.testing.assert_allclose(rewards.moments_std(stats), np.std(seen, ddof=1), rtol=1e-12)
        # This batch normalised by the moments of every score so far, this batch included.
        want = (s.astype(np.float64) - seen.mean()) / (np.std(seen, ddof=1) + EPS)
        np.testing.assert_allclose(train_b, want.astype(np.float32), rtol=1e-6)
        assert train_b.dtype == np.float32
    assert rewards.moments_std(rewards.update_moments(rewards.init_moments(), np.ones(1))) == 0.0


def test_the_clip_binds_after_the_normalisation():
    rng = np.random.default_rng(1)
    s = random_scores(rng, 64, scale=4.0)
    for how, k in (("none", 1), ("batch", 1), ("group", 4), ("running", 1)):
        train_b, _ = rewards.training_scores(s, how, (-0.5, 0.8), k, rewards.init_moments())
        unclipped, _ = rewards.training_scores(s, how, (), k, rewards.init_moments())
        assert train_b.min() == np.float32(-0.5) and train_b.max() == np.float32(0.8), how  # it binds on both sides
        inside = (unclipped > -0.5) & (unclipped < 0.8)
        assert inside.any() and not inside.all()
        np.testing.assert_array_equal(train_b[inside], unclipped[inside])
        np.testing.assert_array_equal(train_b, np.clip(unclipped, -0.5, 0.8))
    with pytest.raises(ValueError, match=r"reward.clip=\(1.0, 0.0\)"):
        rewards.clip_scores(s, (1.0, 0.0))


def test_nonsense_combinations_are_refused_or_warned(caplog):
    def check(**keys):
        c = base_config()
        for dotted, value in keys.items():
            section, leaf = dotted.split("__")
            c[section][leaf] = value
        config_checks.check(c, "rft", source="test.py")

    check(reward__normalize="running", reward__clip=(-5.0, 5.0))
    with pytest.raises(ConfigError, match="config.reward.normalize='group'.*samples_per_prompt=1"):
        check(reward__normalize="group")
    check(reward__normalize="group", rollout__samples_per_prompt=4)
    with pytest.raises(ConfigError, match=r"config.reward.clip=\(2.0, 1.0\).*lo < hi"):
        check(reward__clip=(2.0, 1.0))
    with pytest.raises(ConfigError, match="config.reward.clip"):
        check(reward__clip=(1.0,))
    with pytest.raises(ConfigError, match="config.reward.normalize=.* must be one of"):
        check(reward__normalize="whiten")
    with pytest.raises(ValueError, match="samples_per_prompt=1 must be >= 2"):
        rewards.normalize_scores(np.zeros(4, np.float32), "group", 1)
    with caplog.at_level(logging.WARNING, logger="polar_jax.config_checks"):
        check(reward__normalize="batch", algorithm__estimator="grpo", rollout__samples_per_prompt=4)
    assert "undoes the normalisation" in caplog.text


def test_a_running_normalised_run_stopped_and_resumed_equals_the_uninterrupted_one(config_file, tmp_path):  # noqa: F811
    config = load_config(config_file, ["--config.reward.normalize=running", "--config.reward.clip=(-2.0, 2.0)"])
    reference = trainer.train(config, tmp_path / "reference", progress=False)
    assert (reference.step, reference.stopped_by) == (ITERATIONS, "done")

    def sigterm_at_3(iteration, _metrics):
        if iteration == 3:
            signal.raise_signal(signal.SIGTERM)

    workdir = tmp_path / "resumed"
    stopped = trainer.train(config, workdir, progress=False, on_iteration=sigterm_at_3)
    assert (stopped.step, stopped.stopped_by) == (3, "signal")
    resumed = trainer.train(config, workdir, progress=False)
    assert (resumed.step, resumed.stopped_by) == (ITERATIONS, "done")

    rows = [r for r in metrics(tmp_path / "reference") if "reward" in r]
    assert len(rows) == ITERATIONS
    for row in rows:
        assert row["reward_running_std"] > 0 and np.isfinite(row["reward_running_mean"])
        assert -2.0 <= row["reward_train_mean"] <= 2.0
    assert rows[0]["reward_running_mean"] == pytest.approx(rows[0]["reward"], rel=1e-6)  # one batch seen
    assert untimed(metrics(workdir)) == untimed(metrics(tmp_path / "reference"))
    for a, b in zip(
        jax.tree.leaves(models.load_model(workdir / "policy").params),
        jax.tree.leaves(models.load_model(tmp_path / "reference" / "policy").params),
    ):
        np.testing.assert_array_equal(a, b)
