"""RFT set-up: from a config to the models, the PPO settings and the plan of a run. The
trainer (`trainer.Runner`) and ahead-of-time compilation (`aot`'s rft stage) both read it, so
what `compile --stage rft` lowers is what `rft` runs.

    plan = setup.plan(config, mesh)    # PPO settings, rollouts per iteration, widths, optimisers
    m = setup.load_models(config)      # policy, reward model, target (host arrays)
    critic = setup.critic_model(config, m)
    reward = setup.server_reward(config)  # with reward.server: score through a reward server

The reward model is either loaded (reward.model, placed on the policy's mesh) or served
(reward.server, `polar_jax serve`): `check_reward_source` refuses both, neither, and a server
with the settings that need the reward model's weights or encoding here.

Config sections read: policy, reward, critic, algorithm, rollout, eval, actor_optim,
critic_optim, iterations, seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import jax
import numpy as np

from polar_jax import parallel
from polar_jax.data import encoding
from polar_jax.errors import UserError
from polar_jax.io import models, tokenizers
from polar_jax.io.model import Model
from polar_jax.models import lora as lora_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import runtime_settings
from polar_jax.rft import references, rewards, step
from polar_jax.serve.client import RewardClient, ServerError
from polar_jax.train.optim import OptimConfig, make_optimizer
from polar_jax.train.state import abstract_state, create_state

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one RFT run does per iteration, checked against the mesh: the PPO settings, the
    rollouts (prompts x samples per prompt), the rollout row's widths, the optimiser steps over
    the run and the actor's and (with a critic) critic's optimiser settings."""

    ppo: step.PPOConfig
    rollouts: int
    prompt_len: int  # policy.max_prompt_tokens: the left-padded prompt part of a rollout row
    new_tokens: int  # rollout.max_new_tokens
    total_steps: int  # optimiser steps: iterations x epochs x mini-batches
    actor_optim: OptimConfig
    critic_optim: OptimConfig | None  # None: no critic (any algorithm.estimator but gae)
    lora: lora_lib.LoraConfig | None = None  # policy.lora: the actor trains adapters over a frozen base

    @property
    def width(self) -> int:
        """Tokens in one rollout row: prompt + response."""
        return self.prompt_len + self.new_tokens

    def optimizers(self):
        """The actor's and critic's optax transformations (the update builds the same ones)."""
        actor = make_optimizer(self.actor_optim, self.total_steps)
        return actor, make_optimizer(self.critic_optim, self.total_steps) if self.critic_optim else None

    def abstract_state(self, actor_cfg, critic_cfg, mesh) -> dict:
        """The trained state's shapes and shardings: the restore target, and what AOT lowers over."""
        actor_opt, critic_opt = self.optimizers()
        out = {"actor": abstract_state(actor_cfg, actor_opt, mesh, lora=self.lora)}
        if critic_opt is not None:
            out["critic"] = abstract_state(critic_cfg, critic_opt, mesh)
        return out

    def initial_state(self, actor: Model, critic: Model | None, seed: int, mesh) -> dict:
        """Actor from the policy (with LoRA: fresh adapters, B = 0, from the seed's key), critic
        from its init, optimiser states fresh, all on the mesh."""
        actor_opt, critic_opt = self.optimizers()
        key = jax.random.key(seed)
        if self.lora is not None:
            out = {"actor": create_state(actor.cfg, actor_opt, key, mesh, lora=self.lora)}
        else:
            out = {"actor": create_state(actor.cfg, actor_opt, key, mesh, params=actor.params)}
        if critic_opt is not None:
            out["critic"] = create_state(critic.cfg, critic_opt, key, mesh, params=critic.params)
        return out


def plan(config, mesh) -> Plan:
    """The run's `Plan`; refuses batches that do not split over the mesh's batch shards or the
    mini-batches."""
    ppo = ppo_config(config)
    ro = config.rollout
    rollouts = ro.prompts * ro.samples_per_prompt
    check_batch_shards("rollout.prompts x rollout.samples_per_prompt", rollouts, mesh)
    if rollouts % ppo.minibatches:
        raise ValueError(f"{rollouts} rollouts per iteration do not split into algorithm.minibatches={ppo.minibatches}")
    return Plan(
        ppo=ppo,
        rollouts=rollouts,
        prompt_len=config.policy.max_prompt_tokens,
        new_tokens=ro.max_new_tokens,
        total_steps=config.iterations * ppo.epochs * ppo.minibatches,
        actor_optim=OptimConfig(**config.actor_optim),
        critic_optim=OptimConfig(**config.critic_optim) if ppo.uses_critic else None,
        lora=lora_config(config),
    )


def lora_config(config) -> lora_lib.LoraConfig | None:
    """policy.lora as a `models.lora.LoraConfig`; None with rank 0 (off, the default)."""
    section = config.policy.get("lora")
    if section is None or not section.rank:
        return None
    try:
        return lora_lib.LoraConfig(rank=int(section.rank), alpha=float(section.alpha), targets=tuple(section.targets))
    except ValueError as e:
        raise ValueError(f"policy.{e}") from None


def ppo_config(config) -> step.PPOConfig:
    """The algorithm section as the compiled steps' static settings."""
    a = config.algorithm
    return step.PPOConfig(
        estimator=a.estimator,
        loss=a.get("loss", "ppo"),
        gamma=a.gamma,
        lam=a.lam,
        clip_ratio=a.clip_ratio,
        clip_ratio_low=a.get("clip_ratio_low"),
        clip_ratio_high=a.get("clip_ratio_high"),
        clip_ratio_c=a.clip_ratio_c,
        value_clip=a.value_clip,
        loss_agg=a.loss_agg,
        epochs=a.epochs,
        minibatches=a.minibatches,
        whiten_advantages=a.whiten_advantages,
        group_size=config.rollout.samples_per_prompt,
        group_normalize_std=a.group_normalize_std,
        entropy_coef=a.entropy_coef,
        kl_coef=a.kl_coef,
        kl_loss_coef=a.kl_loss_coef,
        kl_loss_estimator=a.kl_loss_estimator,
        temperature=config.rollout.temperature or 1.0,
        overlong_buffer=a.get("overlong_buffer", 0),
        overlong_penalty=a.get("overlong_penalty", 1.0),
    )


def check_batch_shards(name: str, n: int, mesh) -> None:
    """Refuse a batch of `n` rows (config key `name`) that does not split over the mesh's batch shards."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if n % shards:
        raise ValueError(f"{name} = {n} must be a multiple of the mesh's batch shards (data x fsdp = {shards})")


# ------------------------------------------------------------------------------------ models


@dataclasses.dataclass
class Models:
    """What a run samples from, trains and scores with (host arrays; placed on the mesh later)."""

    policy: Model
    policy_tokenizer: object
    reward: Model | None  # None: scored through reward.server
    reward_tokenizer: object
    target: Model | None = None  # the target policy (config.target): references and the log-likelihood measure
    target_tokenizer: object = None
    policy_source: str = ""  # where the tokenizer files of a saved policy come from


def _existing(path: str, what: str, hint: str) -> str:
    if not path or not pathlib.Path(path).exists():
        raise FileNotFoundError(f"{what} {path!r} not found" + (f"; {hint}" if hint else f"; set config.{what}"))
    return path


def load_models(config) -> Models:
    """Load the policy, the reward model (none with reward.server) and (optionally) the target
    policy of `config`."""
    check_reward_source(config)
    hint = config.setup_hint
    p, r = config.policy, config.reward
    policy = models.load_model(_existing(p.init, "policy.init", hint), **policy_runtime(config))
    reward, reward_tok = None, None
    if not r.get("server"):
        reward = models.load_model(_existing(r.model, "reward.model", hint), dtype=r.dtype)
    require_heads(config, policy.cfg, reward.cfg if reward else None)
    target, target_tokenizer = references.load_target(config) or (None, None)
    policy_tok = tokenizers.load_tokenizer(
        p.init, p.get("trust_remote_code", False), "--config.policy.trust_remote_code=true"
    )
    if reward is not None:
        reward_tok = tokenizers.load_tokenizer(
            r.tokenizer or r.model, r.get("trust_remote_code", False), "--config.reward.trust_remote_code=true"
        )
    return Models(policy, policy_tok, reward, reward_tok, target, target_tokenizer, policy_source=p.init)


# ------------------------------------------------------------------------------ a reward server

SERVER_ENCODED = ("max_response_length", "response_cut_side", "split_text", "reward_token")
API_KEY_ENV = "POLAR_JAX_API_KEY"


class RewardServerUnavailable(UserError):
    """reward.server did not become ready (unreachable, still warming up, or its warm-up failed)."""


def check_reward_source(config) -> None:
    """Exactly one of reward.model and reward.server; with a server, nothing that needs the reward
    model's weights (critic.init=reward_model), tokenizer (reward.tokenizer) or encoding settings
    other than wrapper and max_length (the server encodes rows with its own; `serve`'s flags)."""
    r = config.reward
    server = r.get("server", "")
    if r.model and server:
        raise ValueError(
            f"reward.model={r.model!r} and reward.server={server!r} are both set: score with the model "
            "on this mesh (reward.model) or through the server (reward.server), not both"
        )
    if not r.model and not server:
        raise ValueError(
            "neither reward.model nor reward.server is set: name a reward model directory "
            "(--config.reward.model=DIR) or a running reward server (--config.reward.server=http://HOST:PORT)"
        )
    if not server:
        return
    if not server.startswith(("http://", "https://")):
        raise ValueError(f"reward.server={server!r}: give the server's URL, e.g. http://127.0.0.1:30000")
    if config.critic.init == "reward_model" and config.algorithm.estimator == "gae":  # the one with a critic
        raise ValueError(
            f"critic.init=reward_model needs the reward model's weights, which reward.server={server!r} keeps "
            "on the server: set critic.init=policy, or load the model with reward.model=DIR instead of reward.server"
        )
    if r.tokenizer:
        raise ValueError(
            f"reward.tokenizer={r.tokenizer!r} with reward.server: the server tokenises with its own "
            "(serve --tokenizer); unset reward.tokenizer"
        )
    set_here = [f"reward.encoding.{k}" for k in SERVER_ENCODED if r.encoding.get(k) is not None]
    if set_here:
        raise ValueError(
            f"{', '.join(set_here)} set with reward.server: the server encodes rows with its own encoding "
            f"(its model directory's encoding.json and serve's --{SERVER_ENCODED[0].replace('_', '-')} ... "
            "flags); unset them here and pass them to `serve`"
        )


def server_reward(config, client=None):
    """A `rewards.ServerReward` over reward.server (None without one), once the server's /health
    answers 200 (waiting up to reward.server_wait seconds); its max length checked against
    reward.encoding.max_length when that is set. Key: reward.api_key, else $POLAR_JAX_API_KEY."""
    r = config.reward
    if not r.get("server"):
        return None
    check_reward_source(config)
    key = r.get("api_key") or os.environ.get(API_KEY_ENV) or None
    client = client or RewardClient(r.server, api_key=key, timeout=r.server_timeout)
    log.info("waiting up to %.0f s for the reward server %s", r.server_wait, r.server)
    try:
        client.wait_ready(r.server_wait)
        served = client.request("GET", "/v1/models").json()["data"][0]
    except (TimeoutError, ServerError) as e:
        client.close()
        raise RewardServerUnavailable(
            f"reward.server={r.server} is not ready: {e}. Start it (python -m polar_jax serve --model RM_DIR "
            "--port PORT, with the encoding flags the reward model needs), check the address and "
            "reward.api_key / $POLAR_JAX_API_KEY, or raise reward.server_wait"
        ) from None
    wanted = r.encoding.get("max_length")
    if wanted is not None and served.get("max_model_len") != wanted:
        client.close()
        raise ValueError(
            f"reward.encoding.max_length={wanted} but the server {r.server} encodes up to "
            f"{served.get('max_model_len')} tokens: start it with --max-length {wanted}, or unset the key"
        )
    log.info("scoring through %s (model %s)", r.server, served.get("id"))
    return rewards.ServerReward(
        client, r.strip_think, r.encoding.get("wrapper"), across_processes=jax.process_count() > 1
    )


def policy_runtime(config) -> dict:
    """How the policy is run (`ModelConfig` fields): policy.dtype, remat, attention_impl, scan_unroll."""
    return runtime_settings(config.policy)


def require_heads(config, policy_cfg, reward_cfg=None) -> None:
    """The policy must be a causal LM and the reward model (when given) must have a reward head."""
    if "lm" not in policy_cfg.heads:
        raise ValueError(f"policy.init {config.policy.init} has heads {policy_cfg.heads}: a policy must be a causal LM")
    if reward_cfg is not None and "reward" not in reward_cfg.heads:
        raise ValueError(f"reward.model {config.reward.model} has heads {reward_cfg.heads}: not a reward model")


def critic_config(config, policy_cfg, reward_cfg=None):
    """The critic's shape: the policy's trunk (critic.init=policy) or the reward model's
    (critic.init=reward_model, which needs `reward_cfg`) with a value head, run with the policy's
    dtype, remat, attention and unroll settings."""
    if config.critic.init == "policy":
        base = policy_cfg
    elif config.critic.init == "reward_model":
        base = reward_cfg
        if base.vocab_size != policy_cfg.vocab_size:
            raise ValueError(
                f"critic.init=reward_model: the reward model's vocabulary ({base.vocab_size}) is not "
                f"the policy's ({policy_cfg.vocab_size}); the critic reads policy tokens"
            )
    else:
        raise ValueError(f"critic.init={config.critic.init!r}; choose policy or reward_model")
    return base.replace(
        heads=("value",),
        tie_embeddings=False,
        value_head_bias=bool(config.critic.value_head_bias),
        **policy_cfg.runtime(),
    )


def critic_model(config, m: Models) -> Model:
    """The critic's initial weights: the policy's or the reward model's trunk with a value head
    (and, with critic.value_head_bias, a bias starting at 0)."""
    cfg = critic_config(config, m.policy.cfg, m.reward.cfg if m.reward else None)
    base = m.policy if config.critic.init == "policy" else m.reward
    head = np.zeros(base.cfg.d_model, np.float32)
    if config.critic.init == "reward_model" and config.critic.value_head_init == "reward_head":
        head = np.asarray(base.params["reward_head"], np.float32)
    params = {k: v for k, v in base.params.items() if k not in ("lm_head", "reward_head")}
    params["value_head"] = head
    if cfg.value_head_bias:
        params["value_head_bias"] = np.zeros((), np.float32)
    return Model(cfg, params, base.family, base.hf_config)


def reward_encoding(config) -> encoding.EncodingConfig:
    """The official encoding the reward model is read with: config.reward.encoding's set (non-None)
    fields, over the reward model directory's `encoding.json` ("encoding", as `prepare` / `train`
    write it), over the client's defaults. Keys EncodingConfig does not have are ignored in the file."""
    fields = {f.name for f in dataclasses.fields(encoding.EncodingConfig)}
    explicit = {k: v for k, v in config.reward.encoding.items() if v is not None}
    unknown = sorted(set(explicit) - fields)
    if unknown:
        raise ValueError(
            f"config.reward.encoding.{unknown[0]} is not an encoding setting; known: {', '.join(sorted(fields))}"
        )
    saved = {}
    path = pathlib.Path(config.reward.model or ".") / encoding.ENCODING_FILE
    if config.reward.model and path.is_file():
        try:
            saved = json.loads(path.read_text())["encoding"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f'{path}: not an encoding file with an "encoding" object ({e}); rewrite it with '
                "`prepare` / `train`, or remove it to use config.reward.encoding"
            ) from e
        saved = {k: v for k, v in saved.items() if k in fields}
    merged = {**saved, **explicit}
    log.info(
        "reward encoding %s (from %s)",
        merged or "the client's defaults",
        ", ".join(w for w, d in (("config.reward.encoding", explicit), (str(path), saved)) if d) or "defaults",
    )
    return encoding.EncodingConfig(**merged)


def place(cfg, params, mesh):
    """Host parameters -> arrays on `mesh`, sharded by their logical axes."""
    return parallel.place(params, T.logical_axes(cfg), mesh)
