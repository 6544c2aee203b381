"""The POLAR objective: Bradley-Terry on (chosen, rejected) rewards against one reference.

Pre-training (chosen = same policy as the reference, rejected = another policy) and SFT
(chosen / rejected = human ranks 2 / 3, the reference rank 1) share this loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SUM_KEYS = ("pairs", "loss_sum", "correct", "chosen_reward_sum", "rejected_reward_sum")


def pair_rewards(reward_bt, reward_index_bp2):
    """Rewards at each pair's two reward tokens: [B, T] x [B, P, 2] -> ([B, P], [B, P])."""
    b, p, _ = reward_index_bp2.shape
    flat_bn = jnp.take_along_axis(reward_bt, reward_index_bp2.reshape(b, 2 * p), axis=1)
    pair_bp2 = flat_bn.reshape(b, p, 2)
    return pair_bp2[..., 0], pair_bp2[..., 1]


def bradley_terry(chosen_bp, rejected_bp, pair_mask_bp, margin: float = 0.0):
    """Summed loss -log sigmoid(chosen - rejected - margin) over real pairs, and metric sums.

    Sums (not means) so that micro-batches and devices add up exactly; divide by
    `metrics["pairs"]` for the mean.
    """
    mask = pair_mask_bp.astype(jnp.float32)
    diff_bp = (chosen_bp - rejected_bp).astype(jnp.float32)
    loss_sum = jnp.sum(-jax.nn.log_sigmoid(diff_bp - margin) * mask)
    metrics = {
        "pairs": jnp.sum(mask),
        "loss_sum": loss_sum,
        "correct": jnp.sum((diff_bp > 0) * mask),
        "chosen_reward_sum": jnp.sum(chosen_bp * mask),
        "rejected_reward_sum": jnp.sum(rejected_bp * mask),
    }
    return loss_sum, metrics


def finalize(sums: dict) -> dict:
    """Turn summed metrics into means (loss, accuracy, reward means, margin)."""
    pairs = jnp.maximum(sums["pairs"], 1.0)
    out = {
        "loss": sums["loss_sum"] / pairs,
        "accuracy": sums["correct"] / pairs,
        "chosen_reward": sums["chosen_reward_sum"] / pairs,
        "rejected_reward": sums["rejected_reward_sum"] / pairs,
        "pairs": sums["pairs"],
    }
    out["reward_margin"] = out["chosen_reward"] - out["rejected_reward"]
    return out
