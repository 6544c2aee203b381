"""The PPO losses, as verl's `core_algos.py` (verl 0.5, what the released POLAR recipes run)
computes them. Each per-token loss [B, N] is reduced over the real response tokens by `agg_loss`:
"seq-mean-token-mean" (each sequence's token mean, then the mean over sequences: what the
recipes' micro-batches of 2 sequences give in effect), "token-mean" (one mean over all tokens),
"seq-mean-token-sum" or "seq-mean-token-sum-norm" (Dr. GRPO: each row's token sum / N).

The clip range may be decoupled (DAPO's clip-higher): 1 - clip_ratio_low .. 1 + clip_ratio_high,
each None = clip_ratio. `gspo_policy_loss` is GSPO's sequence-level ratio; `overlong_penalty`
is DAPO's soft over-long punishment, added to the score.

    policy loss  max(-A r, -A clip(r, 1 - eps, 1 + eps)),   r = exp(logp - old_logp)
                 and, where A < 0, at most -A c (dual clip, c = clip_ratio_c = 3)
    value loss   0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)
    entropy      -sum_v p log p of the (temperature-scaled) next-token distribution
    KL           estimators of KL(policy || reference) from log-probs of sampled tokens
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polar_jax.rft.advantages import masked_mean

KL_ESTIMATORS = ("k1", "abs", "k2", "low_var_kl")
LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
POLICY_LOSSES = ("ppo", "gspo")


def agg_loss(loss_bn, mask_bn, mode: str = "token-mean"):
    """A per-token loss reduced to a scalar over the masked tokens, as verl's `core_algos.agg_loss`:
    "token-mean" = sum / tokens; "seq-mean-token-mean" = the mean over rows of each row's token
    mean (a row without tokens counts as 0); "seq-mean-token-sum" = the mean over rows of each
    row's token sum; "seq-mean-token-sum-norm" (Dr. GRPO, arXiv 2503.20783) = the mean over rows
    of each row's token sum / N, N = the response width (rollout.max_new_tokens, a constant;
    verl divides a micro-batch's sum by N alone, here the rows' mean keeps the scale independent
    of the batch size)."""
    if mode == "token-mean":
        return masked_mean(loss_bn, mask_bn)
    if mode == "seq-mean-token-mean":
        return jnp.mean(masked_mean(loss_bn, mask_bn, axis=1))
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        sums_b = jnp.sum(loss_bn * mask_bn.astype(jnp.float32), axis=1)
        return jnp.mean(sums_b) / (loss_bn.shape[1] if mode.endswith("-norm") else 1.0)
    raise ValueError(f"algorithm.loss_agg={mode!r}; choose one of {', '.join(LOSS_AGGS)}")


def ppo_policy_loss(
    logp_bn,
    old_logp_bn,
    advantages_bn,
    mask_bn,
    clip_ratio: float = 0.2,
    clip_ratio_c: float = 3.0,
    agg: str = "token-mean",
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
):
    """Dual-clip surrogate loss, as verl's `core_algos.compute_policy_loss_vanilla`, and its metrics
    {clip_frac, clip_frac_lower, ppo_kl}. Where a clip binds (the PPO range in the direction A
    pushes, or the -A c bound for A < 0) the gradient is zero. The range is 1 - clip_ratio_low ..
    1 + clip_ratio_high (DAPO's decoupled clip, arXiv 2503.14476), each None = clip_ratio."""
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio_bn = jnp.clip(logp_bn - old_logp_bn, -20.0, 20.0)  # as verl, so exp stays finite
    ratio_bn = jnp.exp(log_ratio_bn)
    unclipped_bn = -advantages_bn * ratio_bn
    clipped_bn = -advantages_bn * jnp.clip(ratio_bn, 1.0 - low, 1.0 + high)
    ppo_bn = jnp.maximum(unclipped_bn, clipped_bn)
    lower_bn = -advantages_bn * clip_ratio_c  # dual clip: for A < 0 the loss is at most |A| c
    negative_bn = advantages_bn < 0
    loss_bn = jnp.where(negative_bn, jnp.minimum(ppo_bn, lower_bn), ppo_bn)
    metrics = {
        "clip_frac": masked_mean((clipped_bn > unclipped_bn).astype(jnp.float32), mask_bn),
        "clip_frac_lower": masked_mean((negative_bn & (ppo_bn > lower_bn)).astype(jnp.float32), mask_bn),
        "ppo_kl": masked_mean(-log_ratio_bn, mask_bn),  # KL(old || new), k1 estimate
    }
    return agg_loss(loss_bn, mask_bn, agg), metrics


def gspo_ratio(logp_bn, old_logp_bn, mask_bn):
    """GSPO's sequence ratio s_b = exp(mean over the row's real tokens of logp - old_logp), [B]
    (arXiv 2507.18071; 1 for a row without tokens)."""
    return jnp.exp(masked_mean(logp_bn - old_logp_bn, mask_bn, axis=1))


def gspo_policy_loss(
    logp_bn,
    old_logp_bn,
    advantages_bn,
    mask_bn,
    clip_ratio: float = 0.2,
    agg: str = "seq-mean-token-mean",
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
):
    """GSPO's clipped loss (arXiv 2507.18071), token form as verl's `compute_policy_loss_gspo`:
    per token the ratio sg[s_b] x exp(logp - sg[logp]) (value s_b, gradient s_b d logp_t; log
    clamped at 10), loss max(-A s, -A clip(s, 1 - low, 1 + high)), no dual clip; and
    {clip_frac, clip_frac_lower (0), ppo_kl}. verl always aggregates it "seq-mean-token-mean"
    (the default here)."""
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    seq_log_ratio_b = masked_mean(logp_bn - old_logp_bn, mask_bn, axis=1)
    log_ratio_bn = logp_bn - jax.lax.stop_gradient(logp_bn) + jax.lax.stop_gradient(seq_log_ratio_b)[:, None]
    ratio_bn = jnp.exp(jnp.minimum(log_ratio_bn, 10.0))
    unclipped_bn = -advantages_bn * ratio_bn
    clipped_bn = -advantages_bn * jnp.clip(ratio_bn, 1.0 - low, 1.0 + high)
    loss_bn = jnp.maximum(unclipped_bn, clipped_bn)
    metrics = {
        "clip_frac": masked_mean((clipped_bn > unclipped_bn).astype(jnp.float32), mask_bn),
        "clip_frac_lower": jnp.zeros((), jnp.float32),
        "ppo_kl": masked_mean(old_logp_bn - logp_bn, mask_bn),
    }
    return agg_loss(loss_bn, mask_bn, agg), metrics


def overlong_penalty(lengths_b, max_len: int, buffer_len: int, penalty_factor: float = 1.0):
    """DAPO's soft over-long punishment (arXiv 2503.14476; verl's `reward_manager/dapo.py`
    overlong_buffer): 0 for lengths up to max_len - buffer_len, then falling linearly to
    -penalty_factor at max_len: min(-(L - (max_len - buffer_len)) / buffer_len x factor, 0)."""
    if buffer_len <= 0:
        raise ValueError(f"algorithm.overlong_buffer={buffer_len}: the buffer must be > 0 to shape rewards")
    exceed_b = jnp.asarray(lengths_b, jnp.float32) - (max_len - buffer_len)
    return jnp.minimum(-exceed_b / buffer_len * penalty_factor, 0.0)


def clipped_value_loss(values_bn, old_values_bn, returns_bn, mask_bn, clip_range: float = 0.5, agg: str = "token-mean"):
    """0.5 x the larger of the plain and the clipped squared errors, and {vf_clip_frac}, as
    verl's `core_algos.compute_value_loss`."""
    clipped_values_bn = old_values_bn + jnp.clip(values_bn - old_values_bn, -clip_range, clip_range)
    plain_bn = jnp.square(values_bn - returns_bn)
    clipped_bn = jnp.square(clipped_values_bn - returns_bn)
    loss = 0.5 * agg_loss(jnp.maximum(plain_bn, clipped_bn), mask_bn, agg)
    return loss, {"vf_clip_frac": masked_mean((clipped_bn > plain_bn).astype(jnp.float32), mask_bn)}


def entropy(logits_bnv):
    """Entropy [B, N] of the softmax of each position's logits, float32."""
    logits_bnv = logits_bnv.astype(jnp.float32)
    logp_bnv = jax.nn.log_softmax(logits_bnv, axis=-1)
    return -jnp.sum(jnp.exp(logp_bnv) * logp_bnv, axis=-1)


def kl_penalty(logp_bn, ref_logp_bn, estimator: str = "low_var_kl"):
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    k1: logp - ref (unbiased); abs: |k1|; k2: 0.5 k1^2; low_var_kl (k3, clamped to [-10, 10]
    as verl): exp(ref - logp) - (ref - logp) - 1, non-negative and unbiased.
    """
    diff_bn = logp_bn - ref_logp_bn
    if estimator == "k1":
        return diff_bn
    if estimator == "abs":
        return jnp.abs(diff_bn)
    if estimator == "k2":
        return 0.5 * jnp.square(diff_bn)
    if estimator == "low_var_kl":
        return jnp.clip(jnp.exp(-diff_bn) + diff_bn - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
