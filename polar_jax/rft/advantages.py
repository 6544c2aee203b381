"""Advantage estimators: GAE (with a critic), and without a critic the group baseline (GRPO),
RLOO and REINFORCE++, plus masked whitening and DAPO's group filter.

Dr. GRPO (arXiv 2503.20783) is `group_baseline(normalize_std=False)` (verl's
norm_adv_by_std_in_grpo=False) with the loss aggregated by "seq-mean-token-sum-norm"
(`losses.agg_loss`): config algorithm.estimator="grpo", group_normalize_std=False,
loss_agg="seq-mean-token-sum-norm". Arrays are [B, N]: B rollouts, N response tokens;
`mask_bn` is 1 on real response tokens.

Masked positions are skipped, not treated as the end of the episode: GAE runs over each
row's real tokens as if they were contiguous (for right-padded responses, the usual case,
this is the plain recursion with a terminal value of 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x_bn, mask_bn, axis=None):
    """Mean of `x` over positions where `mask` is 1 (0 where there are none)."""
    mask_bn = mask_bn.astype(jnp.float32)
    return jnp.sum(x_bn * mask_bn, axis=axis) / jnp.maximum(jnp.sum(mask_bn, axis=axis), 1.0)


def masked_whiten(x_bn, mask_bn, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over the masked positions (unbiased variance, as verl); 0 outside the mask."""
    mask_bn = mask_bn.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask_bn), 2.0)
    mean = masked_mean(x_bn, mask_bn)
    var = jnp.sum(jnp.square(x_bn - mean) * mask_bn) / (count - 1.0)
    out_bn = (x_bn - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out_bn = out_bn + mean
    return out_bn * mask_bn


def gae(rewards_bn, values_bn, mask_bn, gamma: float = 1.0, lam: float = 1.0):
    """Generalised advantage estimation; returns (advantages_bn, returns_bn), 0 outside the mask.

    delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}; returns = A + V.
    `values_bn[:, t]` is the critic's value of the state before token t.
    """
    mask_bn = mask_bn.astype(jnp.float32)
    rewards_bn = rewards_bn.astype(jnp.float32) * mask_bn
    values_bn = values_bn.astype(jnp.float32) * mask_bn

    def step(carry, x):  # one time step, last to first; masked steps pass the carry through
        next_value_b, next_gae_b = carry
        r_b, v_b, m_b = x
        delta_b = r_b + gamma * next_value_b - v_b
        gae_b = delta_b + gamma * lam * next_gae_b
        carry = (m_b * v_b + (1 - m_b) * next_value_b, m_b * gae_b + (1 - m_b) * next_gae_b)
        return carry, gae_b

    zeros_b = jnp.zeros(rewards_bn.shape[0], jnp.float32)
    xs = (rewards_bn.T, values_bn.T, mask_bn.T)  # [N, B]: scan over time
    _, advantages_nb = jax.lax.scan(step, (zeros_b, zeros_b), xs, reverse=True)
    advantages_bn = advantages_nb.T * mask_bn
    return advantages_bn, (advantages_bn + values_bn) * mask_bn


def group_baseline(scores_b, group_size: int, normalize_std: bool = True, eps: float = 1e-6):
    """Per-rollout advantage against its group (the `group_size` consecutive rollouts of one
    prompt): score - group mean, divided by the group's (unbiased) std when `normalize_std`."""
    if group_size < 2:
        raise ValueError(f"the group baseline needs at least 2 rollouts per prompt, got {group_size}")
    scores_gk = scores_b.astype(jnp.float32).reshape(-1, group_size)
    centred_gk = scores_gk - jnp.mean(scores_gk, axis=1, keepdims=True)
    if normalize_std:
        std_g1 = jnp.std(scores_gk, axis=1, keepdims=True, ddof=1)
        centred_gk = centred_gk / (std_g1 + eps)
    return centred_gk.reshape(-1)


grpo = group_baseline  # GRPO (arXiv 2402.03300), verl's compute_grpo_outcome_advantage


def rloo(scores_b, group_size: int):
    """REINFORCE leave-one-out (arXiv 2402.14740; verl's compute_rloo_outcome_advantage): each
    rollout's score minus the mean of the other k - 1 rollouts of its group (consecutive rows)."""
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 rollouts per prompt, got {group_size}")
    scores_gk = scores_b.astype(jnp.float32).reshape(-1, group_size)
    others_gk = (jnp.sum(scores_gk, axis=1, keepdims=True) - scores_gk) / (group_size - 1)
    return (scores_gk - others_gk).reshape(-1)


def reinforce_pp(token_rewards_bn, mask_bn, gamma: float = 1.0):
    """REINFORCE++ (arXiv 2501.03262; verl's compute_reinforce_plus_plus_outcome_advantage):
    the discounted return of each token, G_t = r_t + gamma G_{t+1}, whitened over the batch's
    real tokens; returns (advantages_bn, returns_bn). Any per-token KL penalty is already in
    `token_rewards_bn`. Masked positions are skipped as in `gae` (verl restarts the sum at a
    masked token instead: the same for right-padded responses)."""
    mask_bn = mask_bn.astype(jnp.float32)
    rewards_bn = token_rewards_bn.astype(jnp.float32) * mask_bn

    def step(next_return_b, x):  # last to first; a masked step passes the carry through
        r_b, m_b = x
        g_b = r_b + gamma * next_return_b
        return m_b * g_b + (1 - m_b) * next_return_b, g_b

    _, returns_nb = jax.lax.scan(
        step, jnp.zeros(rewards_bn.shape[0], jnp.float32), (rewards_bn.T, mask_bn.T), reverse=True
    )
    returns_bn = returns_nb.T * mask_bn
    return masked_whiten(returns_bn, mask_bn), returns_bn


def keep_groups(scores_b, group_size: int):
    """DAPO's dynamic sampling filter (arXiv 2503.14476; verl's recipe/dapo filter_groups): a
    boolean per group of `group_size` consecutive rollouts, False where every reward in the group
    is equal (a zero-variance group has zero group-relative advantage, so no gradient)."""
    scores_gk = jnp.asarray(scores_b).reshape(-1, group_size)
    return jnp.any(scores_gk != scores_gk[:, :1], axis=1)


def terminal_rewards(scores_b, mask_bn):
    """Token rewards [B, N]: each row's score at its last real response token, 0 elsewhere."""
    n = mask_bn.shape[1]
    last_b = n - 1 - jnp.argmax(mask_bn[:, ::-1] > 0, axis=1)
    return jnp.where(jnp.arange(n)[None] == last_b[:, None], scores_b[:, None], 0.0) * (mask_bn > 0)
