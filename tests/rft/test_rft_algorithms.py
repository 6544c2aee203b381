"""The GRPO family, RLOO, REINFORCE++, GSPO, the decoupled clip, the new loss aggregations, DAPO's
over-long shaping and group filter, each against a plain-numpy transcription of its definition on
random masked batches (one row without tokens); and the config keys that select them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.rft import advantages as A
from polar_jax.rft import losses as L
from polar_jax.rft import setup, step
from polar_jax.rft.defaults import base_config

CASES = [(0, 4, 2, 5), (1, 6, 3, 7), (2, 8, 4, 3)]  # seed, batch, group size, width


def batch(seed, b, n):
    """Random right-padded masks (row 0 without tokens, row 1 full) and float inputs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, n + 1, size=b)
    lengths[0], lengths[1] = 0, n
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    return rng, mask


def whiten_numpy(x, mask):
    real = x[mask > 0]
    return (x - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8) * mask


@pytest.mark.parametrize("seed,b,k,n", CASES)
def test_grpo_is_the_group_baseline_and_rloo_leaves_one_out(seed, b, k, n):
    rng, _ = batch(seed, b, n)
    scores = rng.normal(size=b).astype(np.float32)
    groups = scores.reshape(-1, k).astype(np.float64)
    want = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(A.grpo(jnp.asarray(scores), k), want.reshape(-1), rtol=1e-5, atol=1e-6)
    loo = np.array([[g[i] - np.delete(g, i).mean() for i in range(k)] for g in groups])
    np.testing.assert_allclose(A.rloo(jnp.asarray(scores), k), loo.reshape(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        A.rloo(jnp.asarray(scores), 1)


def reinforce_pp_numpy(rewards, mask, gamma):
    returns = np.zeros_like(rewards)
    for r in range(len(rewards)):
        g = 0.0
        for t in reversed(np.flatnonzero(mask[r])):
            g = rewards[r, t] + gamma * g
            returns[r, t] = g
    return whiten_numpy(returns, mask), returns


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("seed,b,k,n", CASES)
def test_reinforce_pp_is_whitened_discounted_returns(seed, b, k, n, gamma):
    rng, mask = batch(seed, b, n)
    rewards = rng.normal(size=(b, n)).astype(np.float32)
    adv, ret = A.reinforce_pp(rewards, mask, gamma)
    want_adv, want_ret = reinforce_pp_numpy(rewards, mask, gamma)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(adv)[0] == 0)  # the row without tokens


def test_keep_groups_never_keeps_a_zero_variance_group():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.integers(0, 2, size=12).astype(np.float32)  # binary rewards: many constant groups
        keep = np.asarray(A.keep_groups(jnp.asarray(scores), 4))
        np.testing.assert_array_equal(keep, scores.reshape(3, 4).std(1) > 0)
    assert list(np.asarray(A.keep_groups(jnp.array([0.5, 0.5, 0.5, 0.7]), 2))) == [False, True]


# ------------------------------------------------------------------------------ aggregation and losses


def agg_numpy(loss, mask, mode):
    sums = (loss * mask).sum(1)
    if mode == "token-mean":
        return sums.sum() / max(mask.sum(), 1)
    if mode == "seq-mean-token-mean":
        return np.mean(sums / np.maximum(mask.sum(1), 1))
    if mode == "seq-mean-token-sum":
        return np.mean(sums)
    return np.mean(sums) / loss.shape[1]  # seq-mean-token-sum-norm


@pytest.mark.parametrize("mode", L.LOSS_AGGS)
@pytest.mark.parametrize("seed,b,k,n", CASES)
def test_every_aggregation_equals_numpy(seed, b, k, n, mode):
    rng, mask = batch(seed, b, n)
    loss = rng.normal(size=(b, n)).astype(np.float32)
    assert float(L.agg_loss(loss, mask, mode)) == pytest.approx(agg_numpy(loss, mask, mode), rel=1e-5, abs=1e-6)


def ppo_numpy(logp, old, adv, mask, low, high, c, mode):
    ratio = np.exp(logp - old)
    ppo = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - low, 1 + high))
    return agg_numpy(np.where(adv < 0, np.minimum(ppo, -adv * c), ppo), mask, mode)


@pytest.mark.parametrize("low,high", [(None, None), (0.2, 0.28), (0.1, 0.5)])
@pytest.mark.parametrize("seed,b,k,n", CASES)
def test_decoupled_clip_policy_loss_equals_numpy(seed, b, k, n, low, high):
    rng, mask = batch(seed, b, n)
    old = rng.normal(size=(b, n)).astype(np.float32) - 2
    logp = old + rng.uniform(-0.6, 0.6, size=(b, n)).astype(np.float32)
    adv = rng.normal(size=(b, n)).astype(np.float32)
    loss, _ = L.ppo_policy_loss(logp, old, adv, mask, 0.2, 3.0, "seq-mean-token-mean", low, high)
    want = ppo_numpy(logp, old, adv, mask, low or 0.2, high or 0.2, 3.0, "seq-mean-token-mean")
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
    if low is None:  # the default is the symmetric clip, bit for bit
        plain, _ = L.ppo_policy_loss(logp, old, adv, mask, 0.2, 3.0, "seq-mean-token-mean")
        assert float(plain) == float(loss)


def test_decoupled_clip_binds_only_outside_its_own_bounds():
    mask, old = np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)
    # ratios 1.25 (A > 0: inside 1 + 0.28, outside 1 + 0.2), 1.35 (A > 0: outside both), 0.85 (A < 0: inside
    # 1 - 0.2), 0.75 (A < 0: outside 1 - 0.2)
    log_ratio = np.log(np.array([[1.25, 1.35, 0.85, 0.75]], np.float32))
    adv = np.array([[1.0, 1.0, -1.0, -1.0]], np.float32)

    def grad(low, high):
        f = lambda lp: L.ppo_policy_loss(lp, old, adv, mask, 0.2, 3.0, "token-mean", low, high)[0]  # noqa: E731
        return np.asarray(jax.grad(f)(jnp.asarray(log_ratio)))[0]

    g = grad(0.2, 0.28)
    assert g[1] == 0.0 and g[3] == 0.0
    np.testing.assert_allclose(g[[0, 2]], -adv[0, [0, 2]] * np.exp(log_ratio[0, [0, 2]]) / 4, rtol=1e-6)
    assert grad(None, None)[0] == 0.0  # the symmetric 0.2 clips ratio 1.25


def gspo_numpy(logp, old, adv, mask, low, high):
    s = np.exp(((logp - old) * mask).sum(1) / np.maximum(mask.sum(1), 1))
    loss = np.maximum(-adv * s[:, None], -adv * np.clip(s, 1 - low, 1 + high)[:, None])
    return agg_numpy(loss, mask, "seq-mean-token-mean"), s


@pytest.mark.parametrize("seed,b,k,n", CASES)
def test_gspo_loss_and_ratio_equal_numpy(seed, b, k, n):
    rng, mask = batch(seed, b, n)
    old = rng.normal(size=(b, n)).astype(np.float32) - 2
    logp = old + rng.uniform(-0.3, 0.3, size=(b, n)).astype(np.float32)
    adv = np.repeat(rng.normal(size=(b, 1)), n, 1).astype(np.float32) * mask
    want, s = gspo_numpy(logp, old, adv, mask, 3e-2, 4e-2)
    np.testing.assert_allclose(L.gspo_ratio(logp, old, mask), s, rtol=1e-5)
    assert float(L.gspo_ratio(logp, old, mask)[0]) == 1.0  # no tokens: ratio 1
    loss, metrics = L.gspo_policy_loss(logp, old, adv, mask, 0.2, "seq-mean-token-mean", 3e-2, 4e-2)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert 0 < float(metrics["clip_frac"]) < 1


def test_gspo_gradient_is_the_sequence_ratio_and_zero_where_the_clip_binds():
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    old = np.zeros((3, 4), np.float32)
    # mean log-ratios: 0.3 (s = 1.35 > 1.2), 0.05 (s = 1.05 inside), -0.4 (s = 0.67 < 0.8)
    logp = np.array([[0.1, 0.5, 0.3, 9.0], [0.2, -0.1, 0.0, 0.1], [-0.3, -0.5, 9.0, 9.0]], np.float32)
    adv = np.array([[1.0], [2.0], [-1.0]], np.float32) * mask
    grad = np.asarray(jax.grad(lambda lp: L.gspo_policy_loss(lp, old, adv, mask)[0])(jnp.asarray(logp)))
    assert np.all(grad[0] == 0) and np.all(grad[2] == 0)  # clipped rows: no gradient at all
    s1 = np.exp(0.05)
    np.testing.assert_allclose(grad[1], -2.0 * s1 / 4 / 3, rtol=1e-5)  # -A s / |y| / B on every token
    # the token form's gradient equals the pure sequence objective's, -A_b s_b / B, for A constant per row
    seq = lambda lp: -jnp.mean(jnp.asarray(adv[:, 0]) * L.gspo_ratio(lp, old, mask))  # noqa: E731
    np.testing.assert_allclose(grad[1], np.asarray(jax.grad(seq)(jnp.asarray(logp)))[1], rtol=1e-5)


def test_overlong_penalty_boundaries():
    lengths = jnp.array([0, 60, 80, 90, 100])
    got = np.asarray(L.overlong_penalty(lengths, 100, 20, 1.0))
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, -0.5, -1.0], atol=1e-7)
    np.testing.assert_allclose(L.overlong_penalty(lengths, 100, 20, 2.0), 2 * got, atol=1e-7)
    assert float(L.overlong_penalty(jnp.array([81]), 100, 20)[0]) == pytest.approx(-1 / 20)
    with pytest.raises(ValueError, match="algorithm.overlong_buffer=0"):
        L.overlong_penalty(lengths, 100, 0)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("estimator", step.ESTIMATORS)
@pytest.mark.parametrize("loss", L.POLICY_LOSSES)
def test_each_estimator_and_loss_builds_from_the_config(estimator, loss):
    c = base_config()
    c.algorithm.estimator, c.algorithm.loss = estimator, loss
    c.algorithm.clip_ratio_high = 0.28
    c.rollout.samples_per_prompt = 4
    ppo = setup.ppo_config(c)
    assert (ppo.estimator, ppo.loss, ppo.clip_ratio_low, ppo.clip_ratio_high) == (estimator, loss, None, 0.28)
    assert ppo.uses_critic == (estimator == "gae")


def test_defaults_are_unchanged_and_bad_values_name_their_key():
    ppo = setup.ppo_config(base_config())
    assert ppo == step.PPOConfig(group_size=1)  # every new key at its no-op default
    assert (ppo.loss, ppo.clip_ratio_low, ppo.clip_ratio_high, ppo.overlong_buffer) == ("ppo", None, None, 0)
    with pytest.raises(ValueError, match=r"algorithm.estimator='ppo2'; choose one of gae, group, grpo, rloo"):
        step.PPOConfig(estimator="ppo2")
    with pytest.raises(ValueError, match=r"algorithm.loss='cispo'; choose one of ppo, gspo"):
        step.PPOConfig(loss="cispo")
    with pytest.raises(ValueError, match="algorithm.estimator=rloo needs rollout.samples_per_prompt >= 2"):
        step.PPOConfig(estimator="rloo", group_size=1)
    with pytest.raises(ValueError, match="algorithm.clip_ratio_high=-0.1"):
        step.PPOConfig(clip_ratio_high=-0.1)
    with pytest.raises(ValueError, match="algorithm.overlong_buffer=-1"):
        step.PPOConfig(overlong_buffer=-1)
