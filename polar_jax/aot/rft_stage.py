"""Stage "rft": the RFT loop's PPO update (`rft.step.ppo_update`) of an RFT config, lowered over
abstract actor and critic states and one abstract rollout batch, with the model shapes read
from the configs of its model files (`io.models.read_model_config`), not their weights. With
policy.lora the actor state is the adapters' and the frozen base is one more argument."""

from __future__ import annotations

import pathlib

from polar_jax.aot.abstract import abstract_params, abstract_rng, tracing_context
from polar_jax.aot.counting import ppo_row_flops, shard_bytes, traced_matmul_flops
from polar_jax.aot.report import attention_text, count_text, empty_report, gib_text


def rft_model_configs(config):
    """(actor, critic or None) `ModelConfig`s of an RFT config, from the configs of its model
    files alone (no weights read), with the runtime settings `rft.setup.load_models` and
    `critic_model` give them: the actor is policy.init's LM; the critic (none with
    algorithm.estimator=group) the policy's or reward.model's trunk with a "value" head."""
    missing = [k for k in ("policy", "rollout", "algorithm", "critic", "reward", "actor_optim") if k not in config]
    if missing:
        raise ValueError(
            f"--stage rft needs an RFT config (from polar_jax.rft.defaults.base_config, as "
            f"configs/rft_demo.py); this one has no {', '.join(missing)}"
        )
    from polar_jax.io import models
    from polar_jax.rft import setup as rft_setup

    actor = models.read_model_config(
        _model_path(config.policy.init, "policy.init", config), **rft_setup.policy_runtime(config)
    )
    if not rft_setup.ppo_config(config).uses_critic:
        rft_setup.require_heads(config, actor)
        return actor, None
    reward = None
    if config.critic.init == "reward_model":
        # heads given: a directory of config.json alone has no tensor names to tell a reward head from an LM's
        reward = models.read_model_config(
            _model_path(config.reward.model, "reward.model", config), heads=("reward",), dtype=config.reward.dtype
        )
    rft_setup.require_heads(config, actor, reward)
    return actor, rft_setup.critic_config(config, actor, reward)


def _model_path(path: str, what: str, config) -> str:
    """`path` if it exists, else a FileNotFoundError naming the config key `what` and the config's setup hint."""
    if not path or not pathlib.Path(path).exists():
        hint = config.get("setup_hint", "")
        raise FileNotFoundError(
            f"{what} {path!r} not found (--stage rft reads its config.json / metadata, not its "
            f"weights)" + (f"; {hint}" if hint else f"; set --config.{what}")
        )
    return path


def lower(config, mesh, actor_cfg, critic_cfg):
    """(lowered update, report without the compiled figures) of the RFT loop's PPO update
    (`rft.step.ppo_update`) over abstract actor and critic (None: no critic) states and one
    abstract rollout batch (`Experience`), as `rft.trainer.Runner` calls it: the run's
    `rft.setup.Plan` gives the settings, the batch and the optimisers."""
    from polar_jax.models.attention import resolve_impl
    from polar_jax.rft import setup as rft_setup
    from polar_jax.rft import step as rft_step

    plan = rft_setup.plan(config, mesh)
    state = plan.abstract_state(actor_cfg, critic_cfg, mesh)
    actor, critic = state["actor"], state.get("critic")
    base = abstract_params(actor_cfg, mesh) if plan.lora else None  # policy.lora: the frozen base (and reference)
    with tracing_context(mesh):
        traced = rft_step.ppo_update.trace(
            actor,
            critic,
            _abstract_experience(plan, mesh),
            abstract_rng(mesh),
            actor_cfg=actor_cfg,
            critic_cfg=critic_cfg,
            ppo=plan.ppo,
            actor_optim=plan.actor_optim,
            critic_optim=plan.critic_optim,
            total_steps=plan.total_steps,
            mesh=mesh,
            base_params=base,
            lora=plan.lora,
        )
        lowered = traced.lower()
        impl = resolve_impl(actor_cfg.attention_impl, actor_cfg.dtype, plan.width)
    state_bytes = shard_bytes(actor) + (shard_bytes(critic) if critic else 0)
    report = _update_report(
        config,
        plan,
        actor_cfg,
        critic_cfg,
        state_bytes,
        optimizer_bytes=shard_bytes(actor.opt_state) + (shard_bytes(critic.opt_state) if critic else 0),
        attention=attention_text(impl, actor_cfg.attention_impl),
        traced_flops=traced_matmul_flops(traced.jaxpr),
    )
    _add_resident(report, config, plan, actor.params, mesh)
    return lowered, report


def _abstract_experience(plan, mesh):
    """One abstract rollout batch (`rft.step.Experience`, its shapes from `experience_shapes`),
    every field split over its rows as `Runner.put` places them."""
    import jax

    from polar_jax import parallel
    from polar_jax.rft import step as rft_step

    rows = parallel.batch_sharding(mesh, ndim=2)  # Experience has no [B] field
    shapes = rft_step.experience_shapes(plan.rollouts, plan.width, plan.new_tokens)
    return rft_step.Experience(**{k: jax.ShapeDtypeStruct(s, d, sharding=rows) for k, (s, d) in shapes.items()})


def _update_report(config, plan, actor_cfg, critic_cfg, state_bytes: int, **fields):
    """The PPO update's report before compiling: token and FLOP counts, trained parameters (with
    policy.lora the actor's adapters), what the step covers, and the other `fields` given."""
    from polar_jax.models import lora as lora_lib

    ppo, batch, width, new_tokens = plan.ppo, plan.rollouts, plan.width, plan.new_tokens
    actor_trained = lora_lib.num_adapter_params(actor_cfg, plan.lora) if plan.lora else actor_cfg.num_params()
    prompt_len = plan.prompt_len
    per_row = ppo_row_flops(actor_cfg, width, new_tokens) + (ppo_row_flops(critic_cfg, width) if critic_cfg else 0.0)
    report = empty_report(
        tokens_per_step=batch * width * ppo.epochs,
        num_params=actor_trained + (critic_cfg.num_params() if critic_cfg else 0),
        state_bytes=state_bytes,
        model_flops=per_row * batch * ppo.epochs,
        model_flops_rule=(
            "per epoch and rollout row of W tokens: actor 6 N W + 6 L W^2 d + LM head 6 d V x R "
            "response positions"
            + (", critic 6 N W + 6 L W^2 d" if critic_cfg else "")
            + "; N = decoder parameters without embedding and heads"
        ),
        **fields,
    )
    ro = config.rollout
    report.notes.append(
        f"PPO update: {ppo.epochs} epoch(s) x {ppo.minibatches} mini-batch(es) of {batch // ppo.minibatches} "
        f"rollouts x {width} tokens ({prompt_len} prompt + {new_tokens} response), estimator {ppo.estimator}; "
        f"tokens per step = rollouts ({ro.prompts} prompts x {ro.samples_per_prompt}) x width x epochs; rollout, "
        "scoring, experience making and the reference policy are not in this step"
    )
    lora = plan.lora
    actor_text = (
        f"actor LoRA adapters {count_text(actor_trained)} parameters (policy.lora: rank {lora.rank}, alpha "
        f"{lora.alpha:g}, on {', '.join(lora.targets)}) over a frozen {count_text(actor_cfg.num_params())} base"
        if lora
        else f"actor {count_text(actor_trained)} parameters"
    )
    report.notes.append(
        f"trained: {actor_text}"
        + (
            f" + critic {count_text(critic_cfg.num_params())} (critic.init={config.critic.init})"
            if critic_cfg
            else " (no critic: algorithm.estimator is not gae)"
        )
        + f"; their states (parameters and AdamW moments, float32) are {gib_text(state_bytes)} per device, "
        f"the optimiser state (the moments) {gib_text(report.optimizer_bytes)} of it"
    )
    return report


def reward_model_config(config):
    """reward.model's `ModelConfig` (reward head, reward.dtype) from its config alone, or None
    when the directory does not exist (scoring through reward.server, or a placeholder path)."""
    path = config.reward.model
    if not path or not pathlib.Path(path).exists():
        return None
    from polar_jax.io import models

    return models.read_model_config(path, heads=("reward",), dtype=config.reward.dtype)


def _add_resident(report, config, plan, actor_params, mesh) -> None:
    """Count in `report` what a run holds on the devices beside the update: the reference
    policy (a copy of the actor's parameters; with policy.lora none: the frozen base, an
    argument of the step, is the reference) and the reward model, with a note naming them."""
    resident = []
    if (config.reference.keep or plan.ppo.needs_reference) and plan.lora is None:
        report.resident_bytes += shard_bytes(actor_params)
        resident.append(f"reference policy {gib_text(shard_bytes(actor_params))}")
    elif plan.lora is not None:
        report.notes.append(
            "policy.lora: the frozen base is an argument of this step (counted there) and is the reference policy "
            "too; the adapted weights are merged inside the step (W + alpha / r x A @ B, in its temporaries)"
        )
    reward_cfg = reward_model_config(config)
    if reward_cfg is not None:
        params = abstract_params(reward_cfg, mesh)
        report.resident_bytes += shard_bytes(params)
        resident.append(f"reward model {gib_text(shard_bytes(params))}")
    report.resident = ", ".join(resident)
    if resident:
        report.notes.append(
            f"also held on the devices during a run, outside this step (float32 parameters; counted in "
            f"the total): {', '.join(resident)} per device"
        )
