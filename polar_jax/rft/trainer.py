"""The RFT loop: PPO (or the group baseline) on POLAR rewards against references, read top to bottom.

    python -m polar_jax rft --config configs/rft_demo.py --workdir DIR [--config.KEY=VALUE ...]

One iteration: sample a response to each prompt of a batch (`rollout`), score each against
its prompt's reference with the POLAR reward model (`rewards`), then make the experience
(log-probs, values, GAE) and run the PPO epochs (`step`). The actor (the policy LM), the
critic, the frozen reference policy and the reward model all live on one mesh.

A rerun with the same workdir resumes from the newest checkpoint (actor and critic states,
data position); the iteration's keys derive from (seed, iteration), so a resumed run
continues exactly as an uninterrupted one. SIGTERM / SIGINT finish the iteration, save, exit.
Outputs: metrics.jsonl + TensorBoard, checkpoints/, policy/ (HF directory of the final
policy), rft_results.json (held-out reward and target log-likelihood before and after).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from polar_jax import parallel, run_manifest
from polar_jax import sampling as sampling_lib
from polar_jax.data import encoding
from polar_jax.io import checkpoint, hf, models
from polar_jax.io.hf import Model
from polar_jax.models import transformer as T
from polar_jax.rft import data as data_lib
from polar_jax.rft import references, rewards, rollout, step
from polar_jax.scoring import reward_token_id_for
from polar_jax.synth.pool import stop_ids_for
from polar_jax.train.metrics import MetricsWriter
from polar_jax.train.optim import OptimConfig, make_optimizer
from polar_jax.train.state import abstract_state, create_state
from polar_jax.train.trainer import TrainingDiverged, StopOnSignal

log = logging.getLogger(__name__)

RESULTS_FILE = "rft_results.json"
ENCODING_FILE = "encoding.json"  # in a reward model's directory: {"encoding": EncodingConfig fields, ...}
EVAL_BEFORE_FILE = "eval_before.json"


@dataclasses.dataclass
class Models:
    """What a run samples from, trains and scores with (host arrays; placed on the mesh later)."""

    policy: Model
    policy_tokenizer: object
    reward: Model
    reward_tokenizer: object
    target: Model | None = None  # the target policy (config.target): references and the log-likelihood measure
    target_tokenizer: object = None
    policy_source: str = ""  # where the tokenizer files of a saved policy come from


@dataclasses.dataclass
class RunResult:
    """How a run ended: its last iteration, why it stopped, its last metrics and results."""

    step: int
    stopped_by: str  # "done" | "signal"
    metrics: dict
    results: dict  # rft_results.json's contents (a finished run with held-out data), else {}
    data: dict = dataclasses.field(default_factory=dict)  # prompts kept / dropped as over-long, train and eval


def _existing(path: str, what: str, hint: str) -> str:
    if not path or not pathlib.Path(path).exists():
        raise FileNotFoundError(f"{what} {path!r} not found" + (f"; {hint}" if hint else f"; set config.{what}"))
    return path


def load_models(config) -> Models:
    """Load the policy, the reward model and (optionally) the target policy of `config`."""
    hint = config.setup_hint
    p, r = config.policy, config.reward
    policy = models.load_model(_existing(p.init, "policy.init", hint), **policy_runtime(config))
    reward = models.load_model(_existing(r.model, "reward.model", hint), dtype=r.dtype)
    require_heads(config, policy.cfg, reward.cfg)
    target, target_tokenizer = references.load_target(config) or (None, None)
    policy_tok = models.load_tokenizer(p.init, p.get("trust_remote_code", False), "--config.policy.trust_remote_code=true")
    reward_tok = models.load_tokenizer(r.tokenizer or r.model, r.get("trust_remote_code", False),
                                       "--config.reward.trust_remote_code=true")
    return Models(policy, policy_tok, reward, reward_tok, target, target_tokenizer, policy_source=p.init)


def policy_runtime(config) -> dict:
    """How the policy is run (`ModelConfig` fields): policy.dtype, remat, attention_impl, scan_unroll."""
    p = config.policy
    return dict(dtype=p.dtype, remat=p.remat, attention_impl=p.attention_impl, scan_unroll=p.scan_unroll)


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
            raise ValueError(f"critic.init=reward_model: the reward model's vocabulary ({base.vocab_size}) is not "
                             f"the policy's ({policy_cfg.vocab_size}); the critic reads policy tokens")
    else:
        raise ValueError(f"critic.init={config.critic.init!r}; choose policy or reward_model")
    return base.replace(heads=("value",), tie_embeddings=False, value_head_bias=bool(config.critic.value_head_bias),
                        dtype=policy_cfg.dtype, remat=policy_cfg.remat, attention_impl=policy_cfg.attention_impl,
                        scan_unroll=policy_cfg.scan_unroll)


def critic_model(config, m: Models) -> Model:
    """The critic's initial weights: the policy's or the reward model's trunk with a value head
    (and, with critic.value_head_bias, a bias starting at 0)."""
    cfg = critic_config(config, m.policy.cfg, m.reward.cfg)
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
        raise ValueError(f"config.reward.encoding.{unknown[0]} is not an encoding setting; known: "
                         f"{', '.join(sorted(fields))}")
    saved = {}
    path = pathlib.Path(config.reward.model or ".") / ENCODING_FILE
    if config.reward.model and path.is_file():
        try:
            saved = json.loads(path.read_text())["encoding"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an encoding file with an \"encoding\" object ({e}); rewrite it with "
                             "`prepare` / `train`, or remove it to use config.reward.encoding") from e
        saved = {k: v for k, v in saved.items() if k in fields}
    merged = {**saved, **explicit}
    log.info("reward encoding %s (from %s)", merged or "the client's defaults",
             ", ".join(w for w, d in (("config.reward.encoding", explicit), (str(path), saved)) if d) or "defaults")
    return encoding.EncodingConfig(**merged)


def ppo_config(config) -> step.PPOConfig:
    """The algorithm section as the compiled steps' static settings."""
    a = config.algorithm
    return step.PPOConfig(
        estimator=a.estimator, gamma=a.gamma, lam=a.lam, clip_ratio=a.clip_ratio, clip_ratio_c=a.clip_ratio_c,
        value_clip=a.value_clip, loss_agg=a.loss_agg,
        epochs=a.epochs, minibatches=a.minibatches, whiten_advantages=a.whiten_advantages,
        group_size=config.rollout.samples_per_prompt, group_normalize_std=a.group_normalize_std,
        entropy_coef=a.entropy_coef, kl_coef=a.kl_coef, kl_loss_coef=a.kl_loss_coef,
        kl_loss_estimator=a.kl_loss_estimator, temperature=config.rollout.temperature or 1.0)


def place(cfg, params, mesh):
    """Host parameters -> arrays on `mesh`, sharded by their logical axes."""
    shardings = parallel.logical_to_sharding(T.logical_axes(cfg), mesh)

    def put(host, sharding):
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, params, shardings)


class Runner:
    """Everything one iteration needs, set up once: configs, placed frozen models, the compiled steps.

    `iteration(state, examples, i)` is the whole of one RFT iteration (the loop and the
    benchmark both call it); `evaluate(params, examples)` is the held-out measure (greedy by default).
    """

    def __init__(self, config, m: Models, mesh):
        self.config, self.models, self.mesh = config, m, mesh
        self.ppo = ppo_config(config)
        self.actor_cfg = m.policy.cfg
        self.critic = critic_model(config, m) if self.ppo.uses_critic else None
        self.critic_cfg = self.critic.cfg if self.critic else None
        ro = config.rollout
        self.batch_size = ro.prompts * ro.samples_per_prompt
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        for name, n in (("rollout.prompts x rollout.samples_per_prompt", self.batch_size),
                        ("eval.batch_size", config.eval.batch_size)):
            if n % shards:
                raise ValueError(f"{name} = {n} must be a multiple of the mesh's batch shards ({shards})")
        if self.batch_size % self.ppo.minibatches:
            raise ValueError(f"{self.batch_size} rollouts per iteration do not split into "
                             f"algorithm.minibatches={self.ppo.minibatches}")
        stop_ids = stop_ids_for(m.policy_tokenizer, tuple(ro.stop), "rollout.stop")
        self.sampling = sampling_lib.SamplingConfig(temperature=ro.temperature, top_k=ro.top_k, top_p=ro.top_p,
                                                    max_new_tokens=ro.max_new_tokens, stop_ids=tuple(stop_ids),
                                                    loop_max_ngram=ro.loop_max_ngram, loop_repeats=ro.loop_repeats)
        self.eval_sampling = dataclasses.replace(self.sampling, temperature=config.eval.temperature,
                                                 top_k=config.eval.top_k, top_p=config.eval.top_p)
        self.actor_optim = OptimConfig(**config.actor_optim)
        self.critic_optim = OptimConfig(**config.critic_optim) if self.critic else None
        self.total_steps = config.iterations * self.ppo.epochs * self.ppo.minibatches
        self.batch_sharding = parallel.batch_sharding(mesh, ndim=2)
        self.vector_sharding = parallel.batch_sharding(mesh, ndim=1)

        rm = m.reward
        enc_cfg = reward_encoding(config)
        self.reward = rewards.RewardModel(rm.cfg, place(rm.cfg, rm.params, mesh), m.reward_tokenizer,
                                          reward_token_id_for(rm, m.reward_tokenizer, enc_cfg), enc_cfg,
                                          config.reward.batch_size, config.reward.strip_think)
        keep_reference = config.reference.keep or self.ppo.needs_reference
        self.ref_params = place(self.actor_cfg, m.policy.params, mesh) if keep_reference else None
        self.target = None
        if m.target is not None:
            target_params = place(m.target.cfg, m.target.params, mesh)
            self.target = references.TargetPolicy(config.target, m.target.cfg, target_params, m.target_tokenizer,
                                                  put=self.put)

    def initial_params(self):
        """The initial policy's parameters on the mesh (the reference policy's, when kept)."""
        if self.ref_params is not None:
            return self.ref_params
        return place(self.actor_cfg, self.models.policy.params, self.mesh)

    # ------------------------------------------------------------------------------ state

    def optimizers(self):
        """The actor's and critic's optax transformations (the update builds the same ones)."""
        actor = make_optimizer(self.actor_optim, self.total_steps)
        return actor, make_optimizer(self.critic_optim, self.total_steps) if self.critic else None

    def abstract_state(self) -> dict:
        """The checkpointed state's shapes and shardings (a restore target)."""
        actor_opt, critic_opt = self.optimizers()
        out = {"actor": abstract_state(self.actor_cfg, actor_opt, self.mesh)}
        if self.critic:
            out["critic"] = abstract_state(self.critic_cfg, critic_opt, self.mesh)
        return out

    def initial_state(self) -> dict:
        """Actor from the policy, critic from its init, optimiser states fresh, all on the mesh."""
        actor_opt, critic_opt = self.optimizers()
        key = jax.random.key(self.config.seed)
        out = {"actor": create_state(self.actor_cfg, actor_opt, key, self.mesh, params=self.models.policy.params)}
        if self.critic:
            out["critic"] = create_state(self.critic_cfg, critic_opt, key, self.mesh, params=self.critic.params)
        return out

    # ------------------------------------------------------------------------------ one iteration

    def put(self, x):
        """A host batch array -> the mesh, split over its batch axes."""
        return jax.device_put(x, self.batch_sharding if np.ndim(x) == 2 else self.vector_sharding)

    def iteration(self, state: dict, examples: list[data_lib.Example], index: int):
        """Rollout, scoring and update of one batch of prompts; returns (state, metrics).

        Keys: fold_in(key(seed), index), split into sampling and mini-batch order."""
        config, k = self.config, self.config.rollout.samples_per_prompt
        sample_key, update_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), index))
        rows = [ex for ex in examples for _ in range(k)]  # a prompt's k rollouts are consecutive (its group)
        ids = [rollout.prompt_ids(self.models.policy_tokenizer, ex.prompt, config.policy.template,
                                  config.policy.max_prompt_tokens, chat_template=config.policy.chat_template)
               for ex in rows]
        prompt_bt, prompt_lengths_b = rollout.pad_prompts(ids, config.policy.max_prompt_tokens)

        start = time.perf_counter()
        batch = rollout.rollout(self.actor_cfg, state["actor"].params, self.put(prompt_bt),
                                self.put(prompt_lengths_b), self.sampling, sample_key)
        response_bn, lengths_b = np.asarray(batch.response_bn), np.asarray(batch.response_lengths_b)
        rolled = time.perf_counter()

        texts = rollout.response_texts(self.models.policy_tokenizer, response_bn, lengths_b, self.sampling.stop_ids)
        scores_b = self.reward.score([ex.prompt for ex in rows], [ex.reference for ex in rows], texts)
        scored = time.perf_counter()

        train_scores_b = rewards.normalize_scores(scores_b, config.reward.normalize)
        exp, exp_metrics = step.make_experience(
            state["actor"].params, state["critic"].params if self.critic else None, self.ref_params, batch,
            self.put(train_scores_b.astype(np.float32)), actor_cfg=self.actor_cfg, critic_cfg=self.critic_cfg,
            ppo=self.ppo)
        jax.block_until_ready(exp)
        experienced = time.perf_counter()
        actor, critic, update_metrics = step.ppo_update(
            state["actor"], state.get("critic"), exp, update_key, actor_cfg=self.actor_cfg, critic_cfg=self.critic_cfg,
            ppo=self.ppo, actor_optim=self.actor_optim, critic_optim=self.critic_optim, total_steps=self.total_steps,
            mesh=self.mesh)
        metrics = {k: float(v) for k, v in {**exp_metrics, **update_metrics}.items()}  # waits for the update
        updated = time.perf_counter()

        new_state = {"actor": actor, **({"critic": critic} if self.critic else {})}
        stopped = [bool(n) and int(row[n - 1]) in self.sampling.stop_ids for row, n in zip(response_bn, lengths_b)]
        metrics.update(
            reward=float(np.mean(scores_b)), reward_std=float(np.std(scores_b)),
            response_length=float(np.mean(lengths_b)), response_length_max=float(np.max(lengths_b)),
            stopped_fraction=float(np.mean(stopped)),
            time_rollout_s=rolled - start, time_score_s=scored - rolled, time_experience_s=experienced - scored,
            time_update_s=updated - experienced,
            tokens_per_s=float(np.sum(lengths_b) + np.sum(prompt_lengths_b)) / (updated - start),
        )
        return new_state, metrics

    # ------------------------------------------------------------------------------ evaluation

    def evaluate(self, params, examples: list[data_lib.Example]) -> dict:
        """Responses to held-out prompts (greedy, or as `config.eval` samples them, key 0): their
        mean POLAR reward against the references, their mean length, and (with a target policy)
        the target's mean per-token log-likelihood of them."""
        config = self.config
        samples = rollout.sample_texts(
            self.actor_cfg, params, self.models.policy_tokenizer, [ex.prompt for ex in examples], self.eval_sampling,
            jax.random.key(0), template=config.policy.template, prompt_width=config.policy.max_prompt_tokens,
            chat_template=config.policy.chat_template,
            batch_size=config.eval.batch_size, put=self.put)
        scores = self.reward.score([ex.prompt for ex in examples], [ex.reference for ex in examples], samples.texts)
        out = {"reward": float(np.mean(scores)), "response_length": float(np.mean(samples.lengths))}
        if self.target is not None:
            out["target_loglik"] = self.target.loglik([ex.prompt for ex in examples], samples, config.eval.batch_size)
        return out


def read_data(config, workdir: pathlib.Path, target: references.TargetPolicy | None, counting_tokenizer,
              counts: dict | None = None):
    """(training examples, held-out examples or []); `policy_samples` has `target` write them.
    Prompts longer than policy.max_prompt_tokens in `counting_tokenizer` (the policy's) tokens
    are filtered (`data_lib.filter_overlong`); `counts` receives the kept / dropped numbers."""
    d = config.data
    if d.kind == "policy_samples":
        files = references.ensure_reference_data(config, workdir, target, counting_tokenizer)
        train_spec, eval_spec, kind = str(files["train"]), str(files["eval"]), "jsonl"
    else:
        train_spec, eval_spec, kind = d.train, d.eval, d.kind
    if not train_spec:
        raise ValueError("data.train is empty: name the {prompt, reference} JSONL or verl parquet files")
    p = config.policy
    if p.chat_template and getattr(counting_tokenizer, "chat_template", None) is None:
        log.info("the policy's tokenizer has no chat template: message-list prompts are flattened into "
                 "policy.template (%r)", p.template)

    def length(prompt) -> int:
        return len(rollout.full_prompt_ids(counting_tokenizer, prompt, p.template, chat_template=p.chat_template))

    def load(spec: str, what: str) -> list:
        rows = data_lib.read_examples(spec, kind, d.skip_invalid)
        kept, dropped = data_lib.filter_overlong(rows, length, p.max_prompt_tokens, d.filter_overlong_prompts,
                                                 d.truncation, what)
        if counts is not None:
            counts.update({f"{what.split('.')[-1]}_prompts": len(kept), f"{what.split('.')[-1]}_overlong": dropped})
        return kept

    train = load(train_spec, "data.train")
    heldout = load(eval_spec, "data.eval")[: d.eval_rows] if eval_spec else []
    return train, heldout


def save_policy(m: Models, params, out_dir: pathlib.Path) -> pathlib.Path:
    """The trained policy as an HF causal-LM directory with its tokenizer (and the base's remote code)."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    policy = m.policy
    hf.save_hf(Model(policy.cfg, jax.tree.map(np.asarray, params), policy.family, policy.hf_config), tmp, head="lm",
               code_from=m.policy_source or None)
    if m.policy_source:
        models.copy_tokenizer(m.policy_source, tmp)
    else:
        m.policy_tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def run_inputs(config) -> dict:
    """The inputs an RFT run reads (fingerprinted in run.json): models, data files, the target."""
    def items(spec):
        return [item for item in str(spec or "").split(",") if item]

    return {"policy.init": config.policy.init, "reward.model": config.reward.model,
            "reward.tokenizer": config.reward.tokenizer or None, "target.checkpoint": config.target.checkpoint or None,
            "data.train": items(config.data.train), "data.eval": items(config.data.eval)}


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True,
          models_: Models | None = None, on_iteration: Callable[[int, dict], None] | None = None) -> RunResult:
    """Run (or resume) the RFT described by `config` in `workdir`. `models_` replaces loading
    them from the config's paths; `on_iteration(i, metrics)` is called after each iteration."""
    # ------------------------------------------------------------------------------ setup
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_count() > 1:
        raise NotImplementedError("rft runs in one process (any number of local devices); multi-host is not "
                                  "supported yet")
    resolved = json.loads(config.to_json())
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    mesh = parallel.make_mesh(dict(config.mesh))
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].device_kind)
    run_manifest.write(workdir, config, run_inputs(config), mesh=mesh)  # run.json; warns on changed inputs

    # ------------------------------------------------------------------------------ models
    m = models_ or load_models(config)
    log.info("policy %.2fM parameters, reward model %.2fM", m.policy.cfg.num_params() / 1e6,
             m.reward.cfg.num_params() / 1e6)
    with parallel.use_rules(mesh):
        runner = Runner(config, m, mesh)

        # -------------------------------------------------------------------------- data
        data_counts = {}
        train_examples, heldout = read_data(config, workdir, runner.target, m.policy_tokenizer, data_counts)
        prompts = data_lib.PromptIterator(train_examples, config.rollout.prompts, seed=config.seed,
                                          shuffle=config.data.shuffle)
        log.info("%d training prompts, %d held-out", len(train_examples), len(heldout))

        # -------------------------------------------------------------------------- checkpoint
        ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
        start, state = ckpt.restore_latest(runner.abstract_state(), prompts)
        if state is None:
            start, state = 0, runner.initial_state()
        else:
            log.info("resumed from %s iteration %d", ckpt.directory, start)

        # -------------------------------------------------------------------------- loop
        writer = MetricsWriter(workdir, resume_step=start)
        if start == 0:
            writer.write(0, data_counts, "data_")  # prompts kept and dropped as over-long (train / eval)
        if start == 0 and heldout:
            before = runner.evaluate(state["actor"].params, heldout)  # the initial policy
            (workdir / EVAL_BEFORE_FILE).write_text(json.dumps(before, indent=1) + "\n")
            writer.write(0, before, "eval_")
        stop = StopOnSignal()
        bar = tqdm(total=config.iterations, initial=start, desc="rft", unit="it", disable=not progress)
        last_save, logged, it = time.monotonic(), {}, start
        try:
            while it < config.iterations:
                state, metrics = runner.iteration(state, prompts.next_batch(), it)
                it += 1
                bar.update(1)
                if on_iteration is not None:
                    on_iteration(it, metrics)
                if it == config.iterations or bool(config.log_every) and it % config.log_every == 0:  # 0 = never
                    logged = metrics
                    writer.write(it, metrics)
                    bar.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['response_length']:.1f}")
                if metrics["bad_streak"] >= config.max_bad_steps:
                    raise TrainingDiverged(
                        f"{config.max_bad_steps} optimiser steps in a row were skipped (non-finite loss, gradient "
                        f"or parameters) up to iteration {it}; the last good checkpoint is in {ckpt.directory} "
                        f"(iterations {ckpt.steps()}); lower the learning rates")
                if heldout and config.eval_every and it % config.eval_every == 0 and it < config.iterations:
                    writer.write(it, runner.evaluate(state["actor"].params, heldout), "eval_")
                minutes = (time.monotonic() - last_save) / 60
                at_save = it == config.iterations or bool(config.checkpoint_every) and it % config.checkpoint_every == 0
                if at_save or minutes >= config.checkpoint_minutes or stop.requested:
                    ckpt.save(it, state, prompts, resolved, force=True)
                    last_save = time.monotonic()
                if stop.requested:
                    log.warning("%s received: saved iteration %d; exiting", stop.requested, it)
                    break

            # ---------------------------------------------------------------------- results
            results = {}
            if it == config.iterations and not stop.requested:
                save_policy(m, state["actor"].params, workdir / "policy")
                if heldout:
                    after = runner.evaluate(state["actor"].params, heldout)
                    writer.write(it, after, "eval_")
                    results = _results(workdir, runner, heldout, after, config, data_counts)
        finally:
            bar.close()
            ckpt.close()
            writer.close()
            stop.restore()
    log.info("metrics in %s, TensorBoard events in %s", workdir / "metrics.jsonl", workdir / "tensorboard")
    return RunResult(step=it, stopped_by="signal" if stop.requested else "done", metrics=logged, results=results,
                     data=data_counts)


def _results(workdir: pathlib.Path, runner: Runner, heldout, after: dict, config, data_counts: dict) -> dict:
    """rft_results.json: the held-out measures before and after, and the training reward curve's ends."""
    before_file = workdir / EVAL_BEFORE_FILE
    before = (json.loads(before_file.read_text()) if before_file.exists()
              else runner.evaluate(runner.initial_params(), heldout))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curve = [r["reward"] for r in rows if "reward" in r]
    window = max(1, min(10, len(curve) // 4))
    results = {f"{k}_{when}": v[k] for k in before for when, v in (("before", before), ("after", after))}
    results.update(
        heldout_prompts=len(heldout), iterations=config.iterations,
        train_reward_first=float(np.mean(curve[:window])) if curve else None,
        train_reward_last=float(np.mean(curve[-window:])) if curve else None,
        train_reward_window=window, policy=str(workdir / "policy"),
        **{f"data_{k}": v for k, v in data_counts.items()},
    )
    (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    return results
