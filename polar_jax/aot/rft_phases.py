"""Stage "rft", the rest of one iteration: every program `rft.trainer.Runner.iteration` runs
besides the PPO update (`rft_stage`), lowered over abstract (sharded `jax.ShapeDtypeStruct`)
arguments at the config's lengths, each with what a run holds on the devices beside it.

    rollout prefill   engine.steps.prefill_insert   the widest prefill batch (every slot at once) of
                      policy.max_prompt_tokens-wide prompts into the engine's slots
    rollout decode    engine.steps.decode           rollout.slots slots (0: every rollout of the
                      iteration) with KV caches of max_prompt_tokens + rollout.max_new_tokens
    scoring           scoring._prefix_cached_rewards  reward.batch_size prompt groups of the reward
                      model's shared-prefix scoring at their longest (`score_shapes`)
    experience        rft.step.make_experience      the policy's (and reference's) log-probs and the
                      critic's values over one rollout batch

`phases(config, mesh, actor_cfg, critic_cfg)` gives [(Phase, lower)]: `compile.compile_step`
compiles them one after another and puts the update last; the peak decides the fit. What is
"resident" is what the Runner keeps placed while the program runs: during rollout the trained
states (their parameters are the engine's argument), the reference policy and the reward model;
during scoring the trained states and the rollout batch; during experience the AdamW moments and
the reward model. Model shapes come from the config files (`rft_stage.rft_model_configs`).
"""

from __future__ import annotations

import dataclasses

from polar_jax.aot.abstract import abstract_params, tracing_context
from polar_jax.aot.counting import shard_bytes
from polar_jax.aot.report import Phase, gib_text

PHASES = ("rollout prefill", "rollout decode", "scoring", "experience")
PLACEHOLDER_STOP_ID = 0  # rollout.stop's ids need the tokenizer; they change no shape


@dataclasses.dataclass(frozen=True)
class ScoreShapes:
    """One call of the reward model's shared-prefix scoring (`scoring._prefix_cached_rewards`):
    `groups` prefixes of `prefix_width` tokens, `rows` suffixes (candidates) of `suffix_width`."""

    groups: int
    prefix_width: int
    rows: int
    suffix_width: int


def rollout_shapes(config, plan, mesh) -> tuple[int, int, int, int]:
    """(slots, prefill batch, prompt width, cache length) of the Runner's engine: rollout.slots
    (0: every rollout of the iteration), the largest prefill batch the first insert fills (all
    slots or all rollouts, rounded up to the engine's batch buckets), the widest prompt bucket
    (policy.max_prompt_tokens) and max_prompt_tokens + rollout.max_new_tokens cache positions."""
    from polar_jax.engine import Engine
    from polar_jax.rft import setup as rft_setup

    slots = config.rollout.slots or plan.rollouts
    rft_setup.check_batch_shards("rollout.slots", slots, mesh)
    engine = Engine(None, sampling_config(config), slots, config.policy.max_prompt_tokens, mesh=mesh)
    batch = next(b for b in engine.batches if b >= min(slots, plan.rollouts))
    return slots, batch, engine.widths[-1], engine.cache_len


def sampling_config(config):
    """The Runner's rollout `SamplingConfig` (rollout.temperature, top_k, top_p, max_new_tokens,
    loop rule), with a placeholder stop id: the stop ids need the tokenizer and change no shape."""
    from polar_jax import sampling

    ro = config.rollout
    return sampling.SamplingConfig(
        temperature=ro.temperature,
        top_k=ro.top_k,
        top_p=ro.top_p,
        max_new_tokens=ro.max_new_tokens,
        stop_ids=(PLACEHOLDER_STOP_ID,),
        loop_max_ngram=ro.loop_max_ngram,
        loop_repeats=ro.loop_repeats,
    )


def score_shapes(config, enc) -> ScoreShapes:
    """The largest call `RewardModel.score` makes (shared-prefix scoring, `scoring._shared_prefix_scores`):
    reward.batch_size groups; each group's rows are a prompt's rollouts (samples_per_prompt, at most
    `scoring.MAX_GROUP`), padded to a power of two; a suffix is the candidate (rollout.max_new_tokens,
    cut to the encoding's max_response_length) with the "\\n" and the reward token; the shared prefix
    is the official layout's prompt + "\\n" + reference + split + prompt, at its longest: the prompt
    twice (policy.max_prompt_tokens each, or the encoding's prompt budget) and a reference of
    max_response_length, within encoding.max_length. Widths padded as the scorer pads them."""
    from polar_jax import scoring
    from polar_jax.data import encoding

    ro = config.rollout
    candidate = min(ro.max_new_tokens, enc.max_response_length)
    suffix = candidate + 2  # "\n" + candidate + the reward token
    reference = enc.max_response_length
    prompt = min(config.policy.max_prompt_tokens, enc.prompt_budget(reference, candidate))
    prefix = min(2 * max(prompt, 0) + reference + encoding.RESERVED_TOKENS - 1, enc.max_length - suffix)
    groups = config.reward.batch_size
    rows = scoring._pow2_at_least(groups * min(ro.samples_per_prompt, scoring.MAX_GROUP), 1)
    return ScoreShapes(groups, scoring._width(prefix), rows, scoring._width(suffix))


def phases(config, mesh, actor_cfg, critic_cfg) -> list[tuple[Phase, object]]:
    """[(Phase without compiled figures, a function giving its lowered program)] of the RFT
    iteration's rollout prefill, rollout decode, scoring (none with reward.server: the server
    scores) and experience, in the order the Runner runs them."""
    from polar_jax.rft import setup as rft_setup

    plan = rft_setup.plan(config, mesh)
    held = _Held(config, plan, mesh, actor_cfg, critic_cfg)
    out = [_prefill(config, plan, mesh, actor_cfg, held), _decode(config, plan, mesh, actor_cfg, held)]
    if held.reward_cfg is not None:
        out.append(_scoring(config, mesh, held))
    out.append(_experience(config, plan, mesh, actor_cfg, critic_cfg, held))
    return out


class _Held:
    """The abstract arrays a run keeps placed across the iteration, and their per-device bytes."""

    def __init__(self, config, plan, mesh, actor_cfg, critic_cfg):
        from polar_jax.aot import rft_stage

        state = plan.abstract_state(actor_cfg, critic_cfg, mesh)
        self.actor, self.critic = state["actor"], state.get("critic")
        self.lora = plan.lora
        # the policy's full parameters: the actor's own, or with policy.lora the frozen base (merged per iteration)
        self.base = abstract_params(actor_cfg, mesh) if plan.lora else None
        keep_reference = config.reference.keep or plan.ppo.needs_reference
        self.reference = abstract_params(actor_cfg, mesh) if keep_reference and not plan.lora else None
        self.reward_cfg = rft_stage.reward_model_config(config)
        self.reward = abstract_params(self.reward_cfg, mesh) if self.reward_cfg is not None else None
        self.batch = _abstract_rollout(plan, mesh)

    def policy_params(self):
        """What the engine and the experience read as the policy: the actor's parameters, or with
        policy.lora a merged copy (base + adapters, made per iteration: `Runner.policy_params`)."""
        return self.base if self.lora else self.actor.params

    def parts(self, *names) -> tuple[str, int]:
        """("reference policy 1.23 GiB, ...", bytes) of the named held parts that exist."""
        sizes = {
            "actor state": shard_bytes(self.actor),
            "actor optimiser state": shard_bytes(self.actor) - shard_bytes(self.actor.params),
            "critic state": shard_bytes(self.critic) if self.critic else 0,
            "critic optimiser state": shard_bytes(self.critic) - shard_bytes(self.critic.params) if self.critic else 0,
            "frozen base": shard_bytes(self.base) if self.base else 0,
            "merged policy": shard_bytes(self.base) if self.base else 0,
            "reference policy": shard_bytes(self.reference) if self.reference else 0,
            "reward model": shard_bytes(self.reward) if self.reward else 0,
            "rollout batch": shard_bytes(self.batch),
        }
        kept = [(n, sizes[n]) for n in names if sizes[n]]
        return ", ".join(f"{n} {gib_text(b)}" for n, b in kept), sum(b for _, b in kept)

    def rollout_resident(self) -> tuple[str, int]:
        """Beside the engine: the trained states less the parameters it reads, reference, reward model."""
        if self.lora:  # the engine reads the merged copy; the adapters' state and the base stay
            return self.parts("actor state", "frozen base", "critic state", "reference policy", "reward model")
        return self.parts("actor optimiser state", "critic state", "reference policy", "reward model")


def _rows(mesh, n: int, ndim: int):
    """The sharding of an [n, ...] input: split over the batch shards when n divides, else replicated."""
    from polar_jax import parallel

    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return parallel.batch_sharding(mesh, ndim=ndim) if n % shards == 0 else parallel.replicated(mesh)


def _abstract(shape, dtype, sharding):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _abstract_rollout(plan, mesh):
    """One abstract rollout batch (`rft.rollout.Rollout`) as `Runner.put` places it."""
    import jax.numpy as jnp

    from polar_jax.rft.rollout import Rollout

    b, w, n = plan.rollouts, plan.width, plan.new_tokens
    rows2, rows1 = _rows(mesh, b, 2), _rows(mesh, b, 1)
    return Rollout(
        tokens_bt=_abstract((b, w), jnp.int32, rows2),
        mask_bt=_abstract((b, w), jnp.int32, rows2),
        response_bn=_abstract((b, n), jnp.int32, rows2),
        response_mask_bn=_abstract((b, n), jnp.float32, rows2),
        response_lengths_b=_abstract((b,), jnp.int32, rows1),
    )


def _slots(config, plan, mesh, actor_cfg):
    """(abstract engine state, slots, prefill batch, prompt width, cache length, sampling)."""
    from polar_jax.aot.engine_stage import abstract_slots

    slots, batch, width, cache_len = rollout_shapes(config, plan, mesh)
    sampling = sampling_config(config)
    return abstract_slots(actor_cfg, sampling, mesh, slots, cache_len), slots, batch, width, cache_len, sampling


def kv_cache_bytes(cfg, slots: int, cache_len: int, mesh) -> int:
    """Per-device bytes of the engine's KV cache (`engine.steps.Slots.cache`) for `slots` slots of
    `cache_len` positions: keys and values [L, S, C, K, E] in the model's dtype, segment ids and
    positions [S, C] and the index [S] (int32), the slots split over data x fsdp and the kv heads
    over tensor (`engine.steps.SLOT_AXES`); before TPU tile padding."""
    import jax.numpy as jnp

    per_slot_position = 2 * cfg.num_layers * (cfg.num_kv_heads // mesh.shape["tensor"]) * cfg.head_dim
    per_slot = cache_len * (per_slot_position * jnp.dtype(cfg.dtype).itemsize + 2 * 4) + 4
    return slots // (mesh.shape["data"] * mesh.shape["fsdp"]) * per_slot


def _prefill(config, plan, mesh, actor_cfg, held):
    """The engine's prefill of its widest batch of the widest prompts into the slots."""
    import jax
    import jax.numpy as jnp

    from polar_jax.engine import steps

    state, slots, batch, width, cache_len, sampling = _slots(config, plan, mesh, actor_cfg)
    key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
    rows1 = _rows(mesh, batch, 1)
    inputs = (
        _abstract((batch, width), jnp.int32, _rows(mesh, batch, 2)),  # prompt_bt
        _abstract((batch,), jnp.int32, rows1),  # lengths_b
        _abstract((batch,), jnp.int32, rows1),  # slot_b
        _abstract((batch, *key_shape), jnp.uint32, _rows(mesh, batch, 2)),  # key_b: host key data
        _abstract((batch,), jnp.int32, rows1),  # limit_b
    )
    params = held.policy_params()
    resident, resident_bytes = held.rollout_resident()

    def lower():
        with tracing_context(mesh):
            return steps.prefill_insert.lower(actor_cfg, sampling, params, state, *inputs)

    phase = Phase(
        name="rollout prefill",
        program="engine.steps.prefill_insert",
        shapes=f"{batch} prompts x {width} tokens into {slots} slots x {cache_len} cache positions",
        resident=resident,
        resident_bytes=resident_bytes,
        input_bytes=shard_bytes((params, state, inputs)),
    )
    return phase, lower


def _decode(config, plan, mesh, actor_cfg, held):
    """One engine decode call over every slot (the loop of rollout.max_new_tokens steps)."""
    import jax.numpy as jnp

    from polar_jax import parallel
    from polar_jax.engine import steps

    state, slots, _, _, cache_len, sampling = _slots(config, plan, mesh, actor_cfg)
    scalar = _abstract((), jnp.int32, parallel.replicated(mesh))
    params = held.policy_params()
    resident, resident_bytes = held.rollout_resident()

    def lower():
        with tracing_context(mesh):
            return steps.decode.lower(actor_cfg, sampling, params, state, scalar, scalar)

    phase = Phase(
        name="rollout decode",
        program="engine.steps.decode",
        shapes=f"{slots} slots x {cache_len} cache positions = {config.policy.max_prompt_tokens} prompt + "
        f"{config.rollout.max_new_tokens} new; KV cache {gib_text(kv_cache_bytes(actor_cfg, slots, cache_len, mesh))}",
        resident=resident,
        resident_bytes=resident_bytes,
        input_bytes=shard_bytes((params, state)),
    )
    return phase, lower


def _scoring(config, mesh, held):
    """The reward model's largest shared-prefix scoring call (`score_shapes`)."""
    import jax.numpy as jnp

    from polar_jax import scoring
    from polar_jax.rft import setup as rft_setup

    s = score_shapes(config, rft_setup.reward_encoding(config))
    inputs = (
        _abstract((s.groups, s.prefix_width), jnp.int32, _rows(mesh, s.groups, 2)),  # prefix_tokens_gp
        _abstract((s.groups,), jnp.int32, _rows(mesh, s.groups, 1)),  # prefix_len_g
        _abstract((s.rows, s.suffix_width), jnp.int32, _rows(mesh, s.rows, 2)),  # suffix_tokens_rs
        _abstract((s.rows,), jnp.int32, _rows(mesh, s.rows, 1)),  # suffix_len_r
        _abstract((s.rows,), jnp.int32, _rows(mesh, s.rows, 1)),  # group_r
    )
    # the engine's state is gone (the rollouts are host arrays); the trained states and the batch stay
    names = ["actor state", "critic state", "reference policy", "rollout batch"]
    if held.lora:
        names[1:1] = ["frozen base", "merged policy"]
    resident, resident_bytes = held.parts(*names)
    cfg, params = held.reward_cfg, held.reward

    def lower():
        with tracing_context(mesh):
            return scoring._prefix_cached_rewards.lower(cfg, params, *inputs)

    phase = Phase(
        name="scoring",
        program="scoring._prefix_cached_rewards",
        shapes=f"{s.groups} groups x {s.prefix_width} prefix tokens, {s.rows} candidates x {s.suffix_width}",
        resident=resident,
        resident_bytes=resident_bytes,
        input_bytes=shard_bytes((params, inputs)),
    )
    return phase, lower


def _experience(config, plan, mesh, actor_cfg, critic_cfg, held):
    """Log-probs (policy, reference), values, advantages and returns of one rollout batch."""
    import jax.numpy as jnp

    from polar_jax.rft import step as rft_step

    scores = _abstract((plan.rollouts,), jnp.float32, _rows(mesh, plan.rollouts, 1))
    actor = held.actor.params
    critic = held.critic.params if held.critic else None
    # with policy.lora the frozen base is the reference policy, when one is kept (`Runner.ref_params`)
    reference = held.base if held.lora and _keeps_reference(config, plan) else held.reference
    names = ["actor optimiser state", "critic optimiser state", "reward model"]
    if held.lora:  # the adapters are arguments; the iteration's merged copy stays alive beside the step
        names = ["actor optimiser state", "merged policy", "critic optimiser state", "reward model"]
    resident, resident_bytes = held.parts(*names)

    def lower():
        with tracing_context(mesh):
            return rft_step.make_experience.lower(
                actor,
                critic,
                reference,
                held.batch,
                scores,
                actor_cfg=actor_cfg,
                critic_cfg=critic_cfg,
                ppo=plan.ppo,
                base_params=held.base,
                lora=plan.lora,
            )

    phase = Phase(
        name="experience",
        program="rft.step.make_experience",
        shapes=f"{plan.rollouts} rollouts x {plan.width} tokens ({plan.new_tokens} response)",
        resident=resident,
        resident_bytes=resident_bytes,
        input_bytes=shard_bytes((actor, critic, reference, held.base, held.batch, scores)),
    )
    return phase, lower


def _keeps_reference(config, plan) -> bool:
    """The run keeps a reference policy (reference.keep, or a KL term reads one)."""
    return bool(config.reference.keep or plan.ppo.needs_reference)
