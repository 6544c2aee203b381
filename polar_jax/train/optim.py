"""The optimiser as released with POLAR: AdamW (0.9, 0.95), no weight decay, gradient clip
1.0, 3% linear warm-up then cosine decay to 0.1 x the peak learning rate."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings; the defaults are POLAR's released SFT recipe (LR per model size)."""

    lr: float = 1e-5
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    warmup_fraction: float = 0.03
    final_lr_fraction: float = 0.1


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_fraction` of the steps (at least one step when the
    fraction is positive, none when it is 0: the first step then runs at the peak LR), then
    cosine to `final_lr_fraction` x the peak (constant when that is 1.0)."""
    warmup = max(1, int(round(cfg.warmup_fraction * total_steps))) if cfg.warmup_fraction > 0 else 0
    decay = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1), alpha=cfg.final_lr_fraction)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on the schedule."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )
