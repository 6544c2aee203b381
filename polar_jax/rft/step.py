"""Pure step functions of RFT: score-free experience making (log-probs, values, advantages)
and the PPO update (epochs x mini-batches of actor and critic steps). The loop in
`trainer.py` calls them; each is compiled once per configuration.

Layout (see `rollout.py`): rows of T = P + N tokens, the response in the last N columns.
The logits that predict response token j sit at column P - 1 + j, and so does the critic's
value of the state before token j; the POLAR score is the reward of the last real token.

With LoRA on the policy (`lora`, a `models.lora.LoraConfig`), the actor's trained parameters
are its adapters: every actor read merges them into the frozen `base_params` inside the
compiled step (`lora.policy_params`), the gradient reaches only the adapters, and the
optimiser state holds only theirs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from polar_jax.models import lora as lora_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.rft import advantages as adv_lib
from polar_jax.rft import losses
from polar_jax.rft.advantages import masked_mean
from polar_jax.rft.rollout import Rollout
from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
from polar_jax.train.state import TrainState, apply_guarded, state_shardings

ESTIMATORS = ("gae", "group", "grpo", "rloo", "reinforce_pp")  # "grpo" = "group"
GROUP_ESTIMATORS = ("group", "grpo", "rloo")  # need >= 2 rollouts per prompt


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The algorithm's settings (hashable: a static argument of the compiled steps)."""

    estimator: str = "gae"  # ESTIMATORS: "gae" | "group" = "grpo" | "rloo" | "reinforce_pp"
    loss: str = "ppo"  # losses.POLICY_LOSSES: "ppo" (dual clip) | "gspo" (sequence ratio)
    gamma: float = 1.0
    lam: float = 1.0
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None  # DAPO's decoupled clip: None = clip_ratio
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0  # dual clip: for A < 0 the policy loss is at most -A x this (verl)
    value_clip: float = 0.5
    loss_agg: str = "seq-mean-token-mean"  # "seq-mean-token-mean" | "token-mean" (losses.agg_loss)
    epochs: int = 1
    minibatches: int = 1
    whiten_advantages: bool = True
    group_size: int = 1  # rollouts per prompt, consecutive rows
    group_normalize_std: bool = True
    entropy_coef: float = 0.0
    kl_coef: float = 0.0  # in the reward (k1 per token)
    kl_loss_coef: float = 0.0
    kl_loss_estimator: str = "low_var_kl"
    temperature: float = 1.0  # the sampling temperature: log-probs are of logits / temperature
    overlong_buffer: int = 0  # DAPO's soft over-long punishment over the last this many tokens (0 = off)
    overlong_penalty: float = 1.0  # ... reaching -this at rollout.max_new_tokens

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"algorithm.estimator={self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.estimator in GROUP_ESTIMATORS and self.group_size < 2:
            raise ValueError(f"algorithm.estimator={self.estimator} needs rollout.samples_per_prompt >= 2")
        if self.loss not in losses.POLICY_LOSSES:
            raise ValueError(f"algorithm.loss={self.loss!r}; choose one of {', '.join(losses.POLICY_LOSSES)}")
        for key in ("clip_ratio_low", "clip_ratio_high"):
            value = getattr(self, key)
            if value is not None and not 0 <= value:
                raise ValueError(f"algorithm.{key}={value}: must be >= 0 (or None = algorithm.clip_ratio)")
        if self.overlong_buffer < 0:
            raise ValueError(f"algorithm.overlong_buffer={self.overlong_buffer}: must be >= 0 (0 = off)")
        if self.kl_loss_estimator not in losses.KL_ESTIMATORS:
            raise ValueError(
                f"algorithm.kl_loss_estimator={self.kl_loss_estimator!r}; choose one of "
                f"{', '.join(losses.KL_ESTIMATORS)}"
            )
        if self.loss_agg not in losses.LOSS_AGGS:
            raise ValueError(f"algorithm.loss_agg={self.loss_agg!r}; choose one of {', '.join(losses.LOSS_AGGS)}")
        if self.clip_ratio_c <= 1.0:
            raise ValueError(
                f"algorithm.clip_ratio_c={self.clip_ratio_c}: the dual-clip bound must be > 1 (verl "
                "asserts the same; 3.0 as released)"
            )
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("algorithm.epochs and algorithm.minibatches must be >= 1")

    @property
    def uses_critic(self) -> bool:
        """Whether this estimator trains a value model."""
        return self.estimator == "gae"

    @property
    def needs_reference(self) -> bool:
        """Whether a KL term reads the reference policy."""
        return self.kl_coef != 0 or self.kl_loss_coef != 0


class Experience(NamedTuple):
    """One rollout batch with everything the update reads, [B, ...] each."""

    tokens_bt: jax.Array
    mask_bt: jax.Array
    response_mask_bn: jax.Array
    old_logp_bn: jax.Array
    ref_logp_bn: jax.Array  # = old_logp_bn without a reference policy
    old_values_bn: jax.Array  # zeros without a critic
    advantages_bn: jax.Array
    returns_bn: jax.Array


def experience_shapes(batch: int, width: int, new_tokens: int) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
    """{field: (shape, dtype)} of an `Experience` of `batch` rows of `width` = P + N tokens, N = `new_tokens`:
    tokens_bt and mask_bt int32 [B, W], every *_bn field float32 [B, N] (the abstract form, for lowering)."""
    shapes = {"tokens_bt": ((batch, width), jnp.dtype(jnp.int32)), "mask_bt": ((batch, width), jnp.dtype(jnp.int32))}
    shapes.update({k: ((batch, new_tokens), jnp.dtype(jnp.float32)) for k in Experience._fields if k.endswith("_bn")})
    assert tuple(shapes) == Experience._fields, "every Experience field needs a shape here"
    return shapes


# ------------------------------------------------------------------------------ model reads


def response_logits(cfg: ModelConfig, params, tokens_bt, mask_bt, n: int, temperature: float = 1.0):
    """float32 [B, N, V]: the logits that predict the N response tokens, divided by temperature."""
    batch, width = tokens_bt.shape
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    at_bn = jnp.broadcast_to(width - n - 1 + jnp.arange(n), (batch, n))
    logits_bnv = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt, logits_at_bn=at_bn).logits_btv
    return logits_bnv.astype(jnp.float32) / temperature


def token_logprobs(logits_bnv, targets_bn):
    """log softmax(logits)[target] per position, float32 [B, N]."""
    logp_bnv = jax.nn.log_softmax(logits_bnv.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_bnv, targets_bn[..., None], axis=-1)[..., 0]


def response_values(cfg: ModelConfig, params, tokens_bt, mask_bt, n: int):
    """float32 [B, N]: the critic's value of the state before each response token."""
    width = tokens_bt.shape[1]
    positions_bt, segment_ids_bt = T.padded_inputs(mask_bt)
    value_bt = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt).value_bt
    return value_bt[:, width - n - 1 : width - 1]


def _response(tokens_bt, n: int):
    return tokens_bt[:, tokens_bt.shape[1] - n :]


# ------------------------------------------------------------------------------ experience


@functools.partial(jax.jit, static_argnames=("actor_cfg", "critic_cfg", "ppo", "lora"))
def make_experience(
    actor_params,
    critic_params,
    ref_params,
    batch: Rollout,
    scores_b,
    *,
    actor_cfg: ModelConfig,
    critic_cfg: ModelConfig | None,
    ppo: PPOConfig,
    base_params=None,
    lora: lora_lib.LoraConfig | None = None,
):
    """Log-probs of the sampled tokens (policy and reference), values, token rewards (the
    score at the last token, minus kl_coef x k1 per token), advantages and returns. With `lora`,
    `actor_params` are adapters over `base_params`."""
    n = batch.response_bn.shape[1]
    mask_bn = batch.response_mask_bn
    policy_params = lora_lib.policy_params(actor_params, base_params, lora)
    logits_bnv = response_logits(actor_cfg, policy_params, batch.tokens_bt, batch.mask_bt, n, ppo.temperature)
    old_logp_bn = token_logprobs(logits_bnv, batch.response_bn)
    metrics = {"entropy": losses.agg_loss(losses.entropy(logits_bnv), mask_bn, ppo.loss_agg)}
    ref_logp_bn = old_logp_bn
    if ref_params is not None:
        ref_logits_bnv = response_logits(actor_cfg, ref_params, batch.tokens_bt, batch.mask_bt, n, ppo.temperature)
        ref_logp_bn = token_logprobs(ref_logits_bnv, batch.response_bn)
        metrics["kl"] = masked_mean(old_logp_bn - ref_logp_bn, mask_bn)
    if ppo.overlong_buffer:
        lengths_b = jnp.sum(mask_bn, axis=1)
        penalty_b = losses.overlong_penalty(lengths_b, n, ppo.overlong_buffer, ppo.overlong_penalty)
        scores_b = scores_b + penalty_b
        metrics["overlong_penalty"] = jnp.mean(penalty_b)
    rewards_bn = adv_lib.terminal_rewards(scores_b, mask_bn) - ppo.kl_coef * (old_logp_bn - ref_logp_bn) * mask_bn
    if ppo.uses_critic:
        values_bn = response_values(critic_cfg, critic_params, batch.tokens_bt, batch.mask_bt, n) * mask_bn
        advantages_bn, returns_bn = adv_lib.gae(rewards_bn, values_bn, mask_bn, ppo.gamma, ppo.lam)
        metrics["values"] = masked_mean(values_bn, mask_bn)
    elif ppo.estimator == "reinforce_pp":  # whitened inside, as verl
        values_bn = jnp.zeros_like(mask_bn)
        advantages_bn, returns_bn = adv_lib.reinforce_pp(rewards_bn, mask_bn, ppo.gamma)
    else:
        values_bn = jnp.zeros_like(mask_bn)
        seq_rewards_b = jnp.sum(rewards_bn, axis=1)
        if ppo.estimator == "rloo":
            group_b = adv_lib.rloo(seq_rewards_b, ppo.group_size)
        else:
            group_b = adv_lib.group_baseline(seq_rewards_b, ppo.group_size, ppo.group_normalize_std)
        advantages_bn = returns_bn = group_b[:, None] * mask_bn
    metrics["returns"] = masked_mean(returns_bn, mask_bn)
    if ppo.whiten_advantages and ppo.estimator != "reinforce_pp":
        advantages_bn = adv_lib.masked_whiten(advantages_bn, mask_bn)
    exp = Experience(
        batch.tokens_bt, batch.mask_bt, mask_bn, old_logp_bn, ref_logp_bn, values_bn, advantages_bn, returns_bn
    )
    return exp, metrics


# ------------------------------------------------------------------------------ update


def actor_loss(params, exp: Experience, *, cfg: ModelConfig, ppo: PPOConfig, base_params=None, lora=None):
    """Dual-clip (or, with loss="gspo", GSPO's) policy loss - entropy_coef x entropy (+ kl_loss_coef x KL to the reference), each
    aggregated by `ppo.loss_agg`, as verl's `dp_actor.update_policy`; with `lora`, `params` are
    adapters merged into the frozen `base_params`."""
    n = exp.response_mask_bn.shape[1]
    mask_bn = exp.response_mask_bn
    policy_params = lora_lib.policy_params(params, base_params, lora)
    logits_bnv = response_logits(cfg, policy_params, exp.tokens_bt, exp.mask_bt, n, ppo.temperature)
    logp_bn = token_logprobs(logits_bnv, _response(exp.tokens_bt, n))
    clip = dict(clip_ratio_low=ppo.clip_ratio_low, clip_ratio_high=ppo.clip_ratio_high)
    if ppo.loss == "gspo":
        pg_loss, metrics = losses.gspo_policy_loss(
            logp_bn, exp.old_logp_bn, exp.advantages_bn, mask_bn, ppo.clip_ratio, ppo.loss_agg, **clip
        )
    else:
        pg_loss, metrics = losses.ppo_policy_loss(
            logp_bn, exp.old_logp_bn, exp.advantages_bn, mask_bn, ppo.clip_ratio, ppo.clip_ratio_c, ppo.loss_agg, **clip
        )
    loss = pg_loss
    if ppo.entropy_coef:
        loss = loss - ppo.entropy_coef * losses.agg_loss(losses.entropy(logits_bnv), mask_bn, ppo.loss_agg)
    if ppo.kl_loss_coef:
        kl_loss = losses.agg_loss(
            losses.kl_penalty(logp_bn, exp.ref_logp_bn, ppo.kl_loss_estimator), mask_bn, ppo.loss_agg
        )
        loss = loss + ppo.kl_loss_coef * kl_loss
        metrics["kl_loss"] = kl_loss
    metrics["policy_loss"] = pg_loss
    return loss, metrics


def critic_loss(params, exp: Experience, *, cfg: ModelConfig, ppo: PPOConfig):
    """Clipped value loss against the GAE returns, aggregated by `ppo.loss_agg` (verl's `dp_critic`)."""
    n = exp.response_mask_bn.shape[1]
    values_bn = response_values(cfg, params, exp.tokens_bt, exp.mask_bt, n)
    loss, metrics = losses.clipped_value_loss(
        values_bn, exp.old_values_bn, exp.returns_bn, exp.response_mask_bn, ppo.value_clip, ppo.loss_agg
    )
    metrics["value_loss"] = loss
    return loss, metrics


@functools.partial(
    jax.jit,
    donate_argnums=(0, 1),
    static_argnames=("actor_cfg", "critic_cfg", "ppo", "actor_optim", "critic_optim", "total_steps", "mesh", "lora"),
)
def ppo_update(
    actor: TrainState,
    critic: TrainState | None,
    exp: Experience,
    rng,
    *,
    actor_cfg: ModelConfig,
    critic_cfg: ModelConfig | None,
    ppo: PPOConfig,
    actor_optim: OptimConfig,
    critic_optim: OptimConfig | None,
    total_steps: int,
    mesh=None,
    base_params=None,
    lora: lora_lib.LoraConfig | None = None,
):
    """`ppo.epochs` passes over the batch, each in `ppo.minibatches` shuffled mini-batches, one
    actor step (and one critic step) per mini-batch; returns (actor, critic, mean metrics).

    `total_steps` (optimiser steps of the whole run) sets the schedules; with `mesh`, the
    new states keep the parameters' logical shardings. With `lora`, the actor state holds
    adapters over the frozen `base_params` (not donated: the reference policy shares them)."""
    batch = exp.tokens_bt.shape[0]
    if batch % ppo.minibatches:
        raise ValueError(f"{batch} rollouts do not split into algorithm.minibatches={ppo.minibatches}")
    size = batch // ppo.minibatches
    actor_opt = make_optimizer(actor_optim, total_steps)
    critic_opt = make_optimizer(critic_optim, total_steps) if critic is not None else None
    actor_grad = jax.grad(
        functools.partial(actor_loss, cfg=actor_cfg, ppo=ppo, base_params=base_params, lora=lora), has_aux=True
    )
    critic_grad = jax.grad(functools.partial(critic_loss, cfg=critic_cfg, ppo=ppo), has_aux=True)

    def minibatch_step(carry, mb: Experience):
        actor, critic = carry
        grads, metrics = actor_grad(actor.params, mb)
        loss = metrics["policy_loss"]
        actor, _, metrics["actor_grad_norm"] = apply_guarded(actor, grads, loss, actor_opt)
        if critic is not None:
            grads, critic_metrics = critic_grad(critic.params, mb)
            critic, _, metrics["critic_grad_norm"] = apply_guarded(
                critic, grads, critic_metrics["value_loss"], critic_opt
            )
            metrics.update(critic_metrics)
        return (actor, critic), metrics

    def epoch(carry, key):
        order = jax.random.permutation(key, batch) if ppo.minibatches > 1 else jnp.arange(batch)
        mbs = jax.tree.map(lambda x: x[order].reshape(ppo.minibatches, size, *x.shape[1:]), exp)
        return jax.lax.scan(minibatch_step, carry, mbs)

    metrics = {"actor_lr": lr_schedule(actor_optim, total_steps)(actor.step)}
    if critic is not None:
        metrics["critic_lr"] = lr_schedule(critic_optim, total_steps)(critic.step)
    (actor, critic), per_step = jax.lax.scan(epoch, (actor, critic), jax.random.split(rng, ppo.epochs))
    metrics.update({k: jnp.mean(v) for k, v in per_step.items()})
    metrics["skipped"] = actor.skipped + (critic.skipped if critic is not None else 0)
    metrics["bad_streak"] = jnp.maximum(actor.bad_streak, critic.bad_streak if critic is not None else 0)
    if mesh is not None:
        actor = jax.lax.with_sharding_constraint(actor, state_shardings(actor_cfg, actor_opt, mesh, lora=lora))
        if critic is not None:
            critic = jax.lax.with_sharding_constraint(critic, state_shardings(critic_cfg, critic_opt, mesh))
    return actor, critic, metrics
