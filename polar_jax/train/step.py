"""Pure step functions: one optimiser update (with gradient accumulation and a non-finite
guard) and one evaluation pass. The trainer jits them once with explicit shardings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from polar_jax.data import batch as batch_contract
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.train import objectives
from polar_jax.train.state import TrainState, apply_guarded

# The arrays a step reads and their ranks, from the batch contract (data/batch.py).
BATCH_KEYS = batch_contract.STEP_KEYS
BATCH_NDIM = {k: batch_contract.ndim(k) for k in BATCH_KEYS}
SUM_KEYS = (*objectives.SUM_KEYS, "tokens")


def loss_sums(
    params, batch: dict, model_cfg: ModelConfig, margin: float = 0.0, attention_window: int = 0, shared_prefix=True
):
    """Summed Bradley-Terry loss of one (micro-)batch, in either layout of `data.batch`, and its
    summed metrics; `attention_window` > 0 is the packer's promise that no segment is longer.
    `shared_prefix=False` (static) says the rows are unshared: branch ids are all 0 and not passed,
    so a fused kernel runs its plain segment mask (the Pallas tree path takes two kernel calls)."""
    out = T.forward(
        model_cfg,
        params,
        batch["tokens_bt"],
        batch["positions_bt"],
        batch["segment_ids_bt"],
        branch_ids_bt=batch["branch_ids_bt"] if shared_prefix else None,
        attention_window=attention_window,
    )
    chosen_bp, rejected_bp = objectives.pair_rewards(out.reward_bt, batch["reward_index_bp2"])
    loss_sum, sums = objectives.bradley_terry(chosen_bp, rejected_bp, batch["pair_mask_bp"], margin)
    sums["tokens"] = jnp.sum(batch["segment_ids_bt"] != 0).astype(jnp.float32)
    return loss_sum, sums


def _micro_batches(batch: dict, accum_steps: int) -> dict:
    """[B, ...] -> [A, B / A, ...] for a scan over micro-batches."""

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by accum_steps={accum_steps}")
        return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])

    return {k: split(batch[k]) for k in BATCH_KEYS}


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int = 1,
    margin: float = 0.0,
    attention_window: int = 0,
    shared_prefix: bool = True,
):
    """One update on the mean loss over every real pair of the batch; returns (state, metrics).

    A non-finite loss, gradient or updated parameter leaves params and optimiser state
    unchanged and counts the step in `skipped` / `bad_streak`.
    """
    grad_fn = jax.grad(loss_sums, has_aux=True)

    def accumulate(carry, micro):
        grads, sums = grad_fn(state.params, micro, model_cfg, margin, attention_window, shared_prefix)
        acc_grads, acc_sums = carry
        return (jax.tree.map(jnp.add, acc_grads, grads), jax.tree.map(jnp.add, acc_sums, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}
    (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), _micro_batches(batch, accum_steps))

    pairs = jnp.maximum(sums["pairs"], 1.0)
    grads = jax.tree.map(lambda g: g / pairs, grads)
    metrics = objectives.finalize(sums)
    new_state, finite, grad_norm = apply_guarded(state, grads, metrics["loss"], optimizer)
    metrics.update(
        grad_norm=grad_norm,
        lr=schedule(state.step),
        tokens=sums["tokens"],
        finite=finite,
        skipped=new_state.skipped,
        bad_streak=new_state.bad_streak,
    )
    return new_state, metrics


def eval_step(
    params, batch: dict, *, model_cfg: ModelConfig, margin: float = 0.0, attention_window: int = 0, shared_prefix=True
) -> dict:
    """Summed loss / accuracy metrics of one batch (add them up, then `objectives.finalize`)."""
    _, sums = loss_sums(params, batch, model_cfg, margin, attention_window, shared_prefix)
    return sums
