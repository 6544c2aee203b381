"""GAE, the group baseline, whitening and the PPO losses against plain numpy references on
fixed inputs; the clipped objective's gradient is exactly zero where the clip binds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.rft import advantages as A
from polar_jax.rft import losses as L

RNG = np.random.default_rng(0)
REWARDS = RNG.normal(size=(3, 6)).astype(np.float32)
VALUES = RNG.normal(size=(3, 6)).astype(np.float32)
# Right-padded responses of lengths 6, 4 and 1, and a row with a hole (a masked middle token).
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
HOLE = np.array([[1, 1, 0, 1, 1, 0]] * 3, np.float32)


def gae_numpy(rewards, values, mask, gamma, lam):
    """GAE over each row's real tokens as if contiguous (the textbook loop), 0 elsewhere."""
    advantages, returns = np.zeros_like(rewards), np.zeros_like(rewards)
    for b in range(len(rewards)):
        idx = np.flatnonzero(mask[b])
        r, v = rewards[b, idx], values[b, idx]
        last, out = 0.0, np.zeros(len(idx))
        for t in reversed(range(len(idx))):
            next_v = v[t + 1] if t + 1 < len(idx) else 0.0
            last = r[t] + gamma * next_v - v[t] + gamma * lam * last
            out[t] = last
        advantages[b, idx], returns[b, idx] = out, out + v
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
@pytest.mark.parametrize("mask", [MASK, HOLE], ids=["right_padded", "hole"])
def test_gae_equals_the_numpy_loop(gamma, lam, mask):
    adv, ret = A.gae(REWARDS, VALUES, mask, gamma, lam)
    want_adv, want_ret = gae_numpy(REWARDS, VALUES, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)


def test_gae_with_gamma_lambda_one_is_the_terminal_reward_minus_the_value():
    # The released recipe: reward only at the last token, gamma = lambda = 1: A_t = R - V_t.
    scores = np.array([2.0, -1.0, 0.5], np.float32)
    rewards = A.terminal_rewards(jnp.asarray(scores), MASK)
    np.testing.assert_array_equal(np.asarray(rewards)[1], [0, 0, 0, -1.0, 0, 0])
    np.testing.assert_array_equal(np.asarray(rewards)[2], [0.5, 0, 0, 0, 0, 0])
    adv, ret = A.gae(rewards, VALUES, MASK, 1.0, 1.0)
    np.testing.assert_allclose(adv, (scores[:, None] - VALUES) * MASK, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, scores[:, None] * MASK, rtol=1e-5, atol=1e-6)


def test_masked_whiten_uses_only_real_tokens():
    x = RNG.normal(size=(3, 6)).astype(np.float32)
    real = x[MASK > 0]
    want = (x - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8) * MASK
    np.testing.assert_allclose(A.masked_whiten(x, MASK), want, rtol=1e-5, atol=1e-6)
    assert float(A.masked_mean(x, MASK)) == pytest.approx(real.mean(), rel=1e-6)


def test_group_baseline_centres_and_scales_each_group():
    scores = np.array([1.0, 3.0, 2.0, 10.0, 10.0, 13.0], np.float32)  # two prompts x 3 rollouts
    got = np.asarray(A.group_baseline(jnp.asarray(scores), 3))
    groups = scores.reshape(2, 3)
    want = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(
        A.group_baseline(jnp.asarray(scores), 3, normalize_std=False), [-1, 1, 0, -1, -1, 2], rtol=1e-6
    )
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        A.group_baseline(jnp.asarray(scores), 1)


# ------------------------------------------------------------------------------ losses

OLD = RNG.normal(size=(3, 6)).astype(np.float32) - 2.0
ADV = np.array([[1.0, -1.0, 0.5, -0.5, 2.0, -2.0]] * 3, np.float32)
SHIFT = np.array([[-0.5, -0.5, 0.0, 0.1, 0.5, 0.5]] * 3, np.float32)  # log-ratios: some far outside 1 +- 0.2


def ppo_numpy(logp, old, adv, mask, eps):
    ratio = np.exp(logp - old)
    loss_tok = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps))
    clipped = (-adv * np.clip(ratio, 1 - eps, 1 + eps)) > (-adv * ratio)
    return (loss_tok * mask).sum() / mask.sum(), (clipped * mask).sum() / mask.sum()


def test_ppo_policy_loss_equals_numpy():
    logp = OLD + SHIFT
    loss, metrics = L.ppo_policy_loss(logp, OLD, ADV, MASK, 0.2)
    want_loss, want_frac = ppo_numpy(logp, OLD, ADV, MASK, 0.2)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["clip_frac"]) == pytest.approx(want_frac, rel=1e-6)
    assert float(metrics["ppo_kl"]) == pytest.approx(-(SHIFT * MASK).sum() / MASK.sum(), rel=1e-5)


def test_clipped_objective_gradient_is_zero_outside_the_clip_range():
    mask = np.ones((1, 6), np.float32)
    log_ratio = np.array([[0.5, -0.5, 0.5, -0.5, 0.1, -0.1]], np.float32)
    adv = np.array([[1.0, -1.0, -1.0, 1.0, 1.0, -1.0]], np.float32)
    old = np.zeros((1, 6), np.float32)
    grad = jax.grad(lambda lp: L.ppo_policy_loss(lp, old, adv, mask, 0.2)[0])(jnp.asarray(log_ratio))
    grad = np.asarray(grad)[0]
    # ratio e^0.5 > 1.2 with A > 0 and e^-0.5 < 0.8 with A < 0: the clip binds, no gradient at all.
    assert grad[0] == 0.0 and grad[1] == 0.0
    # On the other side of the range the unclipped term wins: d/dlogp = -A ratio / n.
    np.testing.assert_allclose(grad[2:], -adv[0, 2:] * np.exp(log_ratio[0, 2:]) / 6, rtol=1e-6)


def test_clipped_value_loss_equals_numpy():
    values = VALUES + SHIFT * 2  # moves of up to 1.0 against a clip of 0.5
    returns = RNG.normal(size=(3, 6)).astype(np.float32)
    loss, metrics = L.clipped_value_loss(values, VALUES, returns, MASK, 0.5)
    clipped = VALUES + np.clip(values - VALUES, -0.5, 0.5)
    plain_sq, clipped_sq = (values - returns) ** 2, (clipped - returns) ** 2
    want = 0.5 * (np.maximum(plain_sq, clipped_sq) * MASK).sum() / MASK.sum()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["vf_clip_frac"]) == pytest.approx(((clipped_sq > plain_sq) * MASK).sum() / MASK.sum())


def test_entropy_and_kl_estimators():
    logits = RNG.normal(size=(2, 3, 5)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(L.entropy(logits), -(p * np.log(p)).sum(-1), rtol=1e-5)
    logp, ref = np.array([-1.0, -2.0, -0.5]), np.array([-1.5, -1.0, -0.5])
    d = logp - ref
    np.testing.assert_allclose(L.kl_penalty(logp, ref, "k1"), d, rtol=1e-6)
    np.testing.assert_allclose(L.kl_penalty(logp, ref, "abs"), np.abs(d), rtol=1e-6)
    np.testing.assert_allclose(L.kl_penalty(logp, ref, "k2"), 0.5 * d**2, rtol=1e-6)
    np.testing.assert_allclose(L.kl_penalty(logp, ref, "low_var_kl"), np.exp(-d) + d - 1, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        L.kl_penalty(logp, ref, "k9")


# ------------------------------------------------------------------------------ verl's aggregation and dual clip

# Rows of 6, 4 and 1 real tokens: the two aggregations weigh them differently.
LOSS_BN = RNG.normal(size=(3, 6)).astype(np.float32)


def test_the_two_loss_aggregations_equal_numpy():
    token_mean = (LOSS_BN * MASK).sum() / MASK.sum()
    seq_mean = np.mean([(LOSS_BN[b] * MASK[b]).sum() / MASK[b].sum() for b in range(3)])
    assert float(L.agg_loss(LOSS_BN, MASK, "token-mean")) == pytest.approx(token_mean, rel=1e-6)
    assert float(L.agg_loss(LOSS_BN, MASK, "seq-mean-token-mean")) == pytest.approx(seq_mean, rel=1e-6)
    assert abs(token_mean - seq_mean) > 0.05  # the inputs tell them apart
    # The one-token row weighs 1/3 under seq-mean-token-mean, 1/11 under token-mean.
    one_hot = np.zeros_like(LOSS_BN)
    one_hot[2, 0] = 1.0
    assert float(L.agg_loss(one_hot, MASK, "seq-mean-token-mean")) == pytest.approx(1 / 3)
    assert float(L.agg_loss(one_hot, MASK, "token-mean")) == pytest.approx(1 / 11)
    with pytest.raises(ValueError, match="algorithm.loss_agg='sum'; choose one of seq-mean-token-mean, token-mean"):
        L.agg_loss(LOSS_BN, MASK, "sum")


def dual_clip_numpy(logp, old, adv, mask, eps, c, agg):
    ratio = np.exp(logp - old)
    ppo = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps))
    loss_tok = np.where(adv < 0, np.minimum(ppo, -adv * c), ppo)
    lower = ((adv < 0) & (ppo > -adv * c)) * mask
    if agg == "token-mean":
        loss = (loss_tok * mask).sum() / mask.sum()
    else:
        loss = np.mean((loss_tok * mask).sum(1) / mask.sum(1))
    return loss, lower.sum() / mask.sum()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_dual_clip_policy_loss_equals_numpy(agg):
    # log-ratios up to 1.5 (ratio 4.5 > c = 3) on tokens with negative advantages: the lower bound binds there.
    shift = np.array([[1.5, 1.5, 1.2, -0.3, 0.0, 1.3]] * 3, np.float32)
    adv = np.array(
        [[-1.0, 2.0, -0.5, -1.0, 1.0, -2.0], [-1.0, -1.0, 1.0, -0.5, 0.0, 0.0], [-3.0] + [0.0] * 5], np.float32
    )
    loss, metrics = L.ppo_policy_loss(OLD + shift, OLD, adv, MASK, 0.2, 3.0, agg)
    want_loss, want_lower = dual_clip_numpy(OLD + shift, OLD, adv, MASK, 0.2, 3.0, agg)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    # binding (A < 0, ratio > 3): row 0 tokens 0, 2, 5 (ratios 4.48, 3.32, 3.67); row 1 tokens 0, 1; row 2
    # token 0: 6 of the 11 real tokens
    assert float(metrics["clip_frac_lower"]) == pytest.approx(want_lower) == pytest.approx(6 / 11)
    # without the dual clip (c huge) the loss is larger: the bound only ever lowers it
    plain, _ = L.ppo_policy_loss(OLD + shift, OLD, adv, MASK, 0.2, 1e9, agg)
    assert float(plain) > float(loss) + 0.5


def test_dual_clip_gradient_is_zero_where_the_lower_bound_binds():
    mask = np.ones((1, 4), np.float32)
    log_ratio = np.array([[1.5, 0.9, 1.5, 0.5]], np.float32)  # ratios 4.48, 2.46, 4.48, 1.65
    adv = np.array([[-1.0, -1.0, 1.0, -1.0]], np.float32)
    old = np.zeros((1, 4), np.float32)
    grad = np.asarray(jax.grad(lambda lp: L.ppo_policy_loss(lp, old, adv, mask, 0.2, 3.0)[0])(jnp.asarray(log_ratio)))
    assert grad[0, 0] == 0.0  # A < 0, ratio > c: the loss is the constant -A c
    assert grad[0, 2] == 0.0  # A > 0, ratio > 1 + eps: the ordinary clip
    # A < 0 with ratio below c: the unclipped term, d/dlogp = -A ratio / n
    np.testing.assert_allclose(grad[0, [1, 3]], np.exp(log_ratio[0, [1, 3]]) / 4, rtol=1e-6)


def test_value_loss_follows_the_aggregation():
    values, returns = VALUES + 0.3, RNG.normal(size=(3, 6)).astype(np.float32)
    sq = np.maximum((values - returns) ** 2, (VALUES + 0.3 - returns) ** 2)  # within the clip: plain error
    loss, _ = L.clipped_value_loss(values, VALUES, returns, MASK, 0.5, "seq-mean-token-mean")
    assert float(loss) == pytest.approx(0.5 * np.mean((sq * MASK).sum(1) / MASK.sum(1)), rel=1e-5)
