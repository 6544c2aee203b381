"""The RFT loop: PPO (or the group baseline) on POLAR rewards against references, read top to bottom.

    python -m polar_jax rft --config configs/rft_demo.py --workdir DIR [--config.KEY=VALUE ...]

One iteration: sample a response to each prompt of a batch (`rollout`), score each against
its prompt's reference with the POLAR reward model (`rewards`; or through a reward server,
reward.server, as verl's remote reward model), then make the experience
(log-probs, values, GAE) and run the PPO epochs (`step`). The actor (the policy LM), the
critic, the frozen reference policy and the reward model all live on one mesh. Where things are:
    setup.py   config -> models, PPO settings, the run's plan (`aot` reads it too)
    step.py    the pure jitted steps (experience, PPO update)
    rollout.py prompts -> rollouts (through the continuous-batching engine, `polar_jax.engine`)
    outputs.py the finished run's policy/ and rft_results.json
    ../train/loop.py   the run loop every trainer uses (checkpoints, metrics, signals, divergence)
This file wires them: `Runner.iteration` (one iteration), the held-out measure, the outputs.

A rerun with the same workdir resumes from the newest checkpoint (actor and critic states,
reward.normalize="running"'s score moments, data position, which counts the prompt batches
dynamic sampling drew); the iteration's keys derive from (seed, iteration[, round]), so a
resumed run continues exactly as an uninterrupted one. SIGTERM / SIGINT finish the iteration, save, exit.
Outputs: metrics.jsonl + TensorBoard, checkpoints/, policy/ (HF directory of the final
policy), rft_results.json (held-out reward and target log-likelihood before and after).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from polar_jax import parallel
from polar_jax import sampling as sampling_lib
from polar_jax.engine import Engine, EngineStats
from polar_jax.errors import UserError
from polar_jax.models import lora as lora_lib
from polar_jax.rft import advantages, outputs, references, rewards, rollout, setup, step
from polar_jax.rft import data as data_lib
from polar_jax.rft.setup import Models
from polar_jax.scoring import reward_token_id_for
from polar_jax.synth.pool import stop_ids_for
from polar_jax.train import loop

log = logging.getLogger(__name__)


class DynamicSamplingExhausted(UserError):
    """Dynamic sampling ran algorithm.max_gen_batches generation batches without enough kept groups."""


def summed_stats(stats: list[EngineStats]) -> EngineStats:
    """One `EngineStats` of several generation batches: every count and time summed."""
    fields = [f.name for f in dataclasses.fields(EngineStats)]
    return EngineStats(**{name: sum(getattr(s, name) for s in stats) for name in fields})


class Runner:
    """Everything one iteration needs, set up once: the plan, placed frozen models, the compiled steps.

    `iteration(state, examples, i)` is the whole of one RFT iteration (the loop and the
    benchmark both call it); `evaluate(params, examples)` is the held-out measure (greedy by default).
    """

    def __init__(self, config, m: Models, mesh, reward: rewards.ServerReward | None = None):
        self.config, self.models, self.mesh = config, m, mesh
        # Several processes: each samples its share of an iteration's rollouts on its own devices
        # (`local_mesh`), the scoring splits over them, the experience and update run on `mesh`.
        self.processes = jax.process_count()
        self.local_mesh = parallel.local_mesh(mesh)
        self.plan = setup.plan(config, mesh)
        setup.check_batch_shards("eval.batch_size", config.eval.batch_size, mesh)  # the held-out measure's batch
        self.ppo = self.plan.ppo
        self.actor_cfg = m.policy.cfg
        self.critic = setup.critic_model(config, m) if self.ppo.uses_critic else None
        self.critic_cfg = self.critic.cfg if self.critic else None
        ro = config.rollout
        stop_ids = stop_ids_for(m.policy_tokenizer, tuple(ro.stop), "rollout.stop")
        self.sampling = sampling_lib.SamplingConfig(
            temperature=ro.temperature,
            top_k=ro.top_k,
            top_p=ro.top_p,
            max_new_tokens=ro.max_new_tokens,
            stop_ids=tuple(stop_ids),
            loop_max_ngram=ro.loop_max_ngram,
            loop_repeats=ro.loop_repeats,
        )
        self.eval_sampling = dataclasses.replace(
            self.sampling, temperature=config.eval.temperature, top_k=config.eval.top_k, top_p=config.eval.top_p
        )
        slots = ro.slots or self.plan.rollouts  # 0: all rollouts of an iteration at once
        setup.check_batch_shards("rollout.slots", slots, mesh)
        if self.plan.rollouts % self.processes:
            raise ValueError(
                f"an iteration's {self.plan.rollouts} rollouts (rollout.prompts x rollout.samples_per_prompt) must "
                f"divide over the {self.processes} processes"
            )
        slots = max(1, slots // self.processes)  # each process's share of the slots, on its own devices
        setup.check_batch_shards("rollout.slots / processes", slots, self.local_mesh)
        self.engine = Engine(
            self.actor_cfg, self.sampling, slots, config.policy.max_prompt_tokens, mesh=self.local_mesh
        )
        self.batch_sharding = parallel.batch_sharding(mesh, ndim=2)
        self.vector_sharding = parallel.batch_sharding(mesh, ndim=1)

        self.reward = reward or setup.server_reward(config) or self._reward_model(config, m, self.local_mesh)
        if config.algorithm.get("dynamic_sampling", False) and ro.samples_per_prompt < 2:
            raise ValueError(
                "algorithm.dynamic_sampling drops the prompts whose rollouts all score the same: it needs "
                f"rollout.samples_per_prompt >= 2 (got {ro.samples_per_prompt})"
            )
        keep_reference = config.reference.keep or self.ppo.needs_reference
        # policy.lora: the actor trains adapters over this frozen base, placed once; it is the reference policy too
        self.lora = self.plan.lora
        self.base_params = setup.place(self.actor_cfg, m.policy.params, mesh) if self.lora else None
        if self.lora:
            self.ref_params = self.base_params if keep_reference else None
        else:
            self.ref_params = setup.place(self.actor_cfg, m.policy.params, mesh) if keep_reference else None
        self.target = None
        if m.target is not None:
            target_params = setup.place(m.target.cfg, m.target.params, self.local_mesh)
            self.target = references.TargetPolicy(
                config.target, m.target.cfg, target_params, m.target_tokenizer, put=self.put_local
            )

    @staticmethod
    def _reward_model(config, m: Models, mesh) -> rewards.RewardModel:
        """reward.model's weights placed on `mesh` (this process's), with its tokenizer and encoding;
        with several processes each scores its share of the batches."""
        rm = m.reward
        enc_cfg = setup.reward_encoding(config)
        return rewards.RewardModel(
            rm.cfg,
            setup.place(rm.cfg, rm.params, mesh),
            m.reward_tokenizer,
            reward_token_id_for(rm, m.reward_tokenizer, enc_cfg),
            enc_cfg,
            config.reward.batch_size,
            config.reward.strip_think,
            shared_prefix=config.reward.shared_prefix,
            across_processes=jax.process_count() > 1,
        )

    def initial_params(self):
        """The initial policy's parameters on the mesh (the reference policy's, when kept)."""
        if self.ref_params is not None:
            return self.ref_params
        if self.lora:
            return self.base_params
        return setup.place(self.actor_cfg, self.models.policy.params, self.mesh)

    def policy_params(self, actor_params):
        """The policy's full parameters from the actor state's: themselves, or with policy.lora the
        frozen base merged with the adapters (compiled; the unadapted leaves are the base's arrays)."""
        return lora_lib.merged(actor_params, self.base_params, self.lora) if self.lora else actor_params

    def abstract_state(self) -> dict:
        """The checkpointed state's shapes and shardings (a restore target); with
        reward.normalize="running", the running moments of the scores too (host arrays)."""
        return {**self.plan.abstract_state(self.actor_cfg, self.critic_cfg, self.mesh), **self._reward_state()}

    def initial_state(self) -> dict:
        """Actor from the policy, critic from its init, optimiser states fresh, all on the mesh
        (and reward.normalize="running"'s moments of no scores)."""
        state = self.plan.initial_state(self.models.policy, self.critic, self.config.seed, self.mesh)
        return {**state, **self._reward_state()}

    def _reward_state(self) -> dict:
        """{"reward_stats": moments of no scores} with reward.normalize="running", else {}."""
        return {"reward_stats": rewards.init_moments()} if self.config.reward.normalize == "running" else {}

    # ------------------------------------------------------------------------------ one iteration

    def put(self, x):
        """A host batch array (the same on every process) -> the mesh, split over its batch axes."""
        if self.processes == 1:
            return jax.device_put(x, self.batch_sharding if np.ndim(x) == 2 else self.vector_sharding)
        x = np.asarray(x)
        sharding = self.batch_sharding if x.ndim == 2 else self.vector_sharding
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def put_local(self, x):
        """A host batch array -> this process's devices (`local_mesh`), split over its batch axes."""
        if self.processes == 1:
            return self.put(x)
        return jax.device_put(x, parallel.batch_sharding(self.local_mesh, ndim=np.ndim(x)))

    def local(self):
        """The context of process-local work (this process's rollouts, scoring, held-out samples):
        `local_mesh` current; one process: nothing to change."""
        return contextlib.nullcontext() if self.processes == 1 else parallel.use_rules(self.local_mesh)

    def local_params(self, params):
        """The policy's parameters on this process's devices (`local_mesh`), where its rollouts and
        held-out samples are drawn; one process: `params` themselves."""
        if self.processes == 1:
            return params
        return setup.place(self.actor_cfg, parallel.allgather_host(params), self.local_mesh)

    def iteration(
        self,
        state: dict,
        examples: list[data_lib.Example],
        index: int,
        more: Callable[[], list[data_lib.Example]] | None = None,
    ):
        """Rollout, scoring and update of one batch of prompts; returns (state, metrics).

        Keys: fold_in(key(seed), index), split into sampling and mini-batch order. With
        algorithm.dynamic_sampling, `more()` gives further prompt batches (`dynamic_sample`)."""
        config, k = self.config, self.config.rollout.samples_per_prompt
        sample_key, update_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), index))
        params = self.policy_params(state["actor"].params)
        start = time.perf_counter()
        if config.algorithm.get("dynamic_sampling", False):
            batch, scores_b, engine_stats, (rollout_s, _), extra = self.dynamic_sample(
                params, examples, sample_key, more
            )
        else:
            batch, scores_b, engine_stats, (rollout_s, _) = self.sample_round(params, examples, sample_key)
            extra = {}
        response_bn, lengths_b = np.asarray(batch.response_bn), np.asarray(batch.response_lengths_b)
        batch = rollout.Rollout(*map(self.put, batch))  # host arrays (the same on every process) -> the mesh
        scored = time.perf_counter()

        r = config.reward
        train_scores_b, reward_stats = rewards.training_scores(
            scores_b, r.normalize, tuple(r.get("clip", ())), k, state.get("reward_stats")
        )
        exp, exp_metrics = step.make_experience(
            state["actor"].params,
            state["critic"].params if self.critic else None,
            self.ref_params,
            batch,
            self.put(train_scores_b),
            actor_cfg=self.actor_cfg,
            critic_cfg=self.critic_cfg,
            ppo=self.ppo,
            base_params=self.base_params,
            lora=self.lora,
        )
        jax.block_until_ready(exp)
        experienced = time.perf_counter()
        actor, critic, update_metrics = step.ppo_update(
            state["actor"],
            state.get("critic"),
            exp,
            update_key,
            actor_cfg=self.actor_cfg,
            critic_cfg=self.critic_cfg,
            ppo=self.ppo,
            actor_optim=self.plan.actor_optim,
            critic_optim=self.plan.critic_optim,
            total_steps=self.plan.total_steps,
            mesh=self.mesh,
            base_params=self.base_params,
            lora=self.lora,
        )
        metrics = {k: float(v) for k, v in {**exp_metrics, **update_metrics}.items()}  # waits for the update
        updated = time.perf_counter()

        new_state = {"actor": actor, **({"critic": critic} if self.critic else {})}
        if reward_stats is not None:
            new_state["reward_stats"] = reward_stats
            extra.update(
                reward_running_mean=float(reward_stats["mean"]), reward_running_std=rewards.moments_std(reward_stats)
            )
        stopped = [bool(n) and int(row[n - 1]) in self.sampling.stop_ids for row, n in zip(response_bn, lengths_b)]
        metrics.update(
            reward=float(np.mean(scores_b)),
            reward_std=float(np.std(scores_b)),
            reward_train_mean=float(np.mean(train_scores_b)),  # after reward.normalize and reward.clip
            reward_train_std=float(np.std(train_scores_b)),
            **extra,
            response_length=float(np.mean(lengths_b)),
            response_length_max=float(np.max(lengths_b)),
            stopped_fraction=float(np.mean(stopped)),
            time_rollout_s=rollout_s,
            time_score_s=scored - start - rollout_s,  # scoring, with any dynamic sampling's filtering
            time_experience_s=experienced - scored,
            time_update_s=updated - experienced,
            tokens_per_s=float(engine_stats.useful_tokens + engine_stats.prompt_tokens) / (updated - start),
            **engine_stats.metrics("rollout_"),  # utilisation, tokens/s, prefill and decode seconds
        )
        return new_state, metrics

    def sample_round(self, params, examples: list[data_lib.Example], sample_key):
        """One generation batch: each prompt's rollout.samples_per_prompt rollouts (consecutive
        rows, its group) sampled with `sample_key` and scored against its reference; returns
        (batch (host arrays), scores_b, engine stats, (rollout seconds, scoring seconds))."""
        k = self.config.rollout.samples_per_prompt
        rows = [ex for ex in examples for _ in range(k)]  # a prompt's k rollouts are consecutive (its group)
        start = time.perf_counter()
        batch, engine_stats = self.rollouts(self.local_params(params), rows, sample_key)
        response_bn, lengths_b = np.asarray(batch.response_bn), np.asarray(batch.response_lengths_b)
        rolled = time.perf_counter()
        texts = rollout.response_texts(self.models.policy_tokenizer, response_bn, lengths_b, self.sampling.stop_ids)
        with self.local():
            scores_b = self.reward.score([ex.prompt for ex in rows], [ex.reference for ex in rows], texts)
        return batch, scores_b, engine_stats, (rolled - start, time.perf_counter() - rolled)

    def dynamic_sample(self, params, examples: list[data_lib.Example], sample_key, more):
        """DAPO's dynamic sampling (arXiv 2503.14476), as verl's recipe/dapo trainer does it
        (algorithm.filter_groups: num_gen_batches, max_num_gen_batches): score a generation
        batch, drop the groups whose scores are all equal (`advantages.keep_groups`), and draw
        further prompt batches from `more()` until rollout.prompts groups are kept; the first
        rollout.prompts of them, in the order drawn, are the batch (its size unchanged). Round 0
        samples with `sample_key`, round r with fold_in(sample_key, r); the prompts drawn advance
        the data iterator, so a checkpoint's position includes them. More than
        algorithm.max_gen_batches rounds (0 = no limit) raise. Returns (batch, scores_b, engine
        stats, (rollout s, scoring s), {dynamic_sampling_rounds, dynamic_sampling_kept_fraction})."""
        config, k = self.config, self.config.rollout.samples_per_prompt
        limit, wanted = config.algorithm.get("max_gen_batches", 0), len(examples)
        kept_batches, kept_scores, all_stats, seconds = [], [], [], np.zeros(2)
        kept_groups, drawn_groups, rounds = 0, 0, 0
        while kept_groups < wanted:
            if limit and rounds >= limit:
                raise DynamicSamplingExhausted(
                    f"dynamic sampling kept {kept_groups} of the {wanted} groups an iteration needs (rollout.prompts) "
                    f"in {rounds} generation batches = algorithm.max_gen_batches: too many groups score the same "
                    "for every rollout; raise algorithm.max_gen_batches (0 = no limit), sample more rollouts per "
                    "prompt, or use easier or harder prompts"
                )
            if rounds:
                if more is None:
                    raise ValueError("algorithm.dynamic_sampling needs a source of further prompt batches (`more`)")
                examples = more()
            key = sample_key if rounds == 0 else jax.random.fold_in(sample_key, rounds)
            batch, scores_b, engine_stats, times = self.sample_round(params, examples, key)
            rounds += 1
            keep_g = np.asarray(advantages.keep_groups(scores_b, k))
            keep_b = np.repeat(keep_g, k)
            kept_batches.append(jax.tree.map(lambda x: np.asarray(x)[keep_b], batch))
            kept_scores.append(np.asarray(scores_b)[keep_b])
            all_stats.append(engine_stats)
            seconds += times
            kept_groups, drawn_groups = kept_groups + int(keep_g.sum()), drawn_groups + keep_g.size
        rows = wanted * k
        batch = rollout.Rollout(*(np.concatenate(xs)[:rows] for xs in zip(*kept_batches)))
        metrics = {
            "dynamic_sampling_rounds": float(rounds),
            "dynamic_sampling_kept_fraction": kept_groups / drawn_groups,
        }
        return batch, np.concatenate(kept_scores)[:rows], summed_stats(all_stats), tuple(seconds), metrics

    def rollouts(self, params, rows: list[data_lib.Example], sample_key) -> tuple[rollout.Rollout, EngineStats]:
        """Every rollout of an iteration's rows through the engine, row b drawing with
        row_keys(sample_key, B)[b] (the rows `rollout.rollout` gives the padded prompts with
        those keys), as host arrays; and what the engine did for them. With P processes, process
        p samples rows p*B/P .. (p+1)*B/P - 1 (`params` on its own devices) and every process gets
        all rows (a row's tokens depend on its prompt and key only, not on who samples it); the
        engine's figures are summed over the processes (decode steps: the most of any)."""
        p = self.config.policy
        ids = [
            rollout.prompt_ids(
                self.models.policy_tokenizer, ex.prompt, p.template, p.max_prompt_tokens, chat_template=p.chat_template
            )
            for ex in rows
        ]
        self.engine.stats = EngineStats()  # this iteration's figures
        keys_b = sampling_lib.row_keys(sample_key, len(ids))
        if self.processes == 1:
            return rollout.engine_rollout(self.engine, params, ids, keys_b, p.max_prompt_tokens), self.engine.stats
        if len(ids) % self.processes:
            raise ValueError(f"{len(ids)} rollouts do not divide over {self.processes} processes")
        share = len(ids) // self.processes
        mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        keys_b = np.asarray(jax.random.key_data(keys_b))  # host key data: sliced here, no device work
        with self.local():
            gen = self.engine.generate(params, ids[mine], keys_b[mine])
        tokens_bn = parallel.concat_processes(gen.tokens_bn)
        lengths_b = parallel.concat_processes(gen.lengths_b)
        prompt_bt, prompt_lengths_b = rollout.pad_prompts(ids, p.max_prompt_tokens)
        with self.local():
            batch = jax.tree.map(np.asarray, rollout.assemble(prompt_bt, prompt_lengths_b, tokens_bn, lengths_b))
        return batch, self.processes_stats(self.engine.stats)

    @staticmethod
    def processes_stats(stats: EngineStats) -> EngineStats:
        """Every process's engine figures as one: counts and seconds summed, decode steps the most
        of any process (each decodes its share at once), on every process."""
        fields = [f.name for f in dataclasses.fields(EngineStats)]
        all_pf = parallel.concat_processes(np.float64([[getattr(stats, f) for f in fields]]))
        values = {f: (all_pf[:, i].max() if f == "decode_steps" else all_pf[:, i].sum()) for i, f in enumerate(fields)}
        return EngineStats(**{f: type(getattr(stats, f))(v) for f, v in values.items()})

    # ------------------------------------------------------------------------------ evaluation

    def evaluate(self, params, examples: list[data_lib.Example]) -> dict:
        """Responses to held-out prompts (greedy, or as `config.eval` samples them, key 0): their
        mean POLAR reward against the references, their mean length, and (with a target policy)
        the target's mean per-token log-likelihood of them."""
        params = self.local_params(params)  # every process samples every held-out prompt
        with self.local():
            return self._evaluate(params, examples)

    def _evaluate(self, params, examples: list[data_lib.Example]) -> dict:
        config = self.config
        samples = rollout.sample_texts(
            self.actor_cfg,
            params,
            self.models.policy_tokenizer,
            [ex.prompt for ex in examples],
            self.eval_sampling,
            jax.random.key(0),
            template=config.policy.template,
            prompt_width=config.policy.max_prompt_tokens,
            chat_template=config.policy.chat_template,
            batch_size=config.eval.batch_size,
            mesh=self.local_mesh,
        )
        scores = self.reward.score([ex.prompt for ex in examples], [ex.reference for ex in examples], samples.texts)
        out = {"reward": float(np.mean(scores)), "response_length": float(np.mean(samples.lengths))}
        if self.target is not None:
            out["target_loglik"] = self.target.loglik([ex.prompt for ex in examples], samples, config.eval.batch_size)
        return out

    def target_baseline(self, examples: list[data_lib.Example]) -> dict:
        """The reward-gaming check: the target's own fresh samples (key 1) on the held-out prompts,
        their mean POLAR reward against the references and the target's log-likelihood of them. A
        policy whose reward passes this while its `target_loglik` stays below has found what the
        reward model over-rates, not the target's behaviour."""
        with self.local():
            return self._target_baseline(examples)

    def _target_baseline(self, examples: list[data_lib.Example]) -> dict:
        prompts = [ex.prompt for ex in examples]
        samples = self.target.sample(prompts, jax.random.key(1), self.config.eval.batch_size)
        scores = self.reward.score(prompts, [ex.reference for ex in examples], samples.texts)
        loglik = self.target.loglik(prompts, samples, self.config.eval.batch_size)
        return {"target_samples_reward": float(np.mean(scores)), "target_samples_loglik": loglik}


def read_data(
    config,
    workdir: pathlib.Path,
    target: references.TargetPolicy | None,
    counting_tokenizer,
    counts: dict | None = None,
):
    """(training examples, held-out examples or []); `policy_samples` has `target` write them.
    Prompts longer than policy.max_prompt_tokens in `counting_tokenizer` (the policy's) tokens
    are filtered (`data_lib.filter_overlong`); `counts` receives the kept / dropped numbers."""
    d = config.data
    if d.kind == "policy_samples":  # several processes: process 0 samples and writes them, the others read its files
        files = references.paths(workdir)
        if jax.process_index() == 0:
            files = references.ensure_reference_data(config, workdir, target, counting_tokenizer)
        parallel.barrier("rft reference data")
        train_spec, eval_spec, kind = str(files["train"]), str(files["eval"]), "jsonl"
    else:
        train_spec, eval_spec, kind = d.train, d.eval, d.kind
    if not train_spec:
        raise ValueError("data.train is empty: name the {prompt, reference} JSONL or verl parquet files")
    p = config.policy
    if p.chat_template and getattr(counting_tokenizer, "chat_template", None) is None:
        log.info(
            "the policy's tokenizer has no chat template: message-list prompts are flattened into policy.template (%r)",
            p.template,
        )

    def length(prompt) -> int:
        return len(rollout.full_prompt_ids(counting_tokenizer, prompt, p.template, chat_template=p.chat_template))

    def load(spec: str, what: str) -> list:
        rows = data_lib.read_examples(spec, kind, d.skip_invalid)
        kept, dropped = data_lib.filter_overlong(
            rows, length, p.max_prompt_tokens, d.filter_overlong_prompts, d.truncation, what
        )
        if counts is not None:
            counts.update({f"{what.split('.')[-1]}_prompts": len(kept), f"{what.split('.')[-1]}_overlong": dropped})
        return kept

    train = load(train_spec, "data.train")
    heldout = load(eval_spec, "data.eval")[: d.eval_rows] if eval_spec else []
    return train, heldout


def run_inputs(config) -> dict:
    """The inputs an RFT run reads (fingerprinted in run.json): models, data files, the target."""

    def items(spec):
        return [item for item in str(spec or "").split(",") if item]

    return {
        "policy.init": config.policy.init,
        "reward.model": config.reward.model,
        "reward.tokenizer": config.reward.tokenizer or None,
        "target.checkpoint": config.target.checkpoint or None,
        "data.train": items(config.data.train),
        "data.eval": items(config.data.eval),
    }


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    progress: bool = True,
    models_: Models | None = None,
    on_iteration: Callable[[int, dict], None] | None = None,
) -> loop.RunResult:
    """Run (or resume) the RFT described by `config` in `workdir`. `models_` replaces loading
    them from the config's paths; `on_iteration(i, metrics)` is called after each iteration.
    With reward.server, the server must answer /health within reward.server_wait seconds."""
    setup.check_reward_source(config)  # before the workdir is touched
    started = time.perf_counter()
    with loop.Run(
        config,
        workdir,
        inputs=run_inputs(config),
        total=config.iterations,
        unit="iteration",
        desc="rft",
        progress=progress,
    ) as run:
        server = setup.server_reward(config)  # before loading anything: an unreachable server fails first
        m = models_ or setup.load_models(config)
        log.info(
            "policy %.2fM parameters, reward model %s",
            m.policy.cfg.num_params() / 1e6,
            f"{m.reward.cfg.num_params() / 1e6:.2f}M" if m.reward else f"at {config.reward.server}",
        )
        runner = Runner(config, m, run.mesh, reward=server)
        writer = jax.process_index() == 0  # several processes: process 0 writes the outputs
        data_counts = {}
        with runner.local():  # policy_samples: the target samples on this process's devices
            train_examples, heldout = read_data(config, run.workdir, runner.target, m.policy_tokenizer, data_counts)
        prompts = data_lib.PromptIterator(
            train_examples, config.rollout.prompts, seed=config.seed, shuffle=config.data.shuffle
        )
        log.info("%d training prompts, %d held-out", len(train_examples), len(heldout))
        state = run.restore_or_init(runner.abstract_state(), runner.initial_state, prompts)
        if run.start == 0:
            run.write(0, data_counts, "data_")  # prompts kept and dropped as over-long (train / eval)
        if run.start == 0 and heldout:
            before = runner.evaluate(runner.policy_params(state["actor"].params), heldout)  # the initial policy
            if writer:
                (run.workdir / outputs.EVAL_BEFORE_FILE).write_text(json.dumps(before, indent=1) + "\n")
            run.write(0, before, "eval_")

        hooks = [
            loop.Hook(
                lambda i, state, metrics: {
                    "eval_": runner.evaluate(runner.policy_params(state["actor"].params), heldout)
                },
                every=config.eval_every if heldout else 0,
                at_end=False,
            )
        ]  # the last one is "after"
        if on_iteration is not None:
            hooks.append(loop.Hook(lambda i, state, metrics: on_iteration(i, metrics)))
        state = run.loop(
            lambda state, i: runner.iteration(state, prompts.next_batch(), i, more=prompts.next_batch),
            state,
            prompts,
            log_spec=loop.Log(
                postfix={
                    "reward": ("reward", ".3f"),
                    "len": ("response_length", ".1f"),
                    "util": ("rollout_utilisation", ".2f"),
                },
                hint="lower the learning rates",
                host_metrics=True,
            ),
            hooks=tuple(hooks),
        )

        results = {}
        if run.finished:
            # every process gathers the parameters (several: a collective), process 0 writes them
            policy_host = parallel.allgather_host(runner.policy_params(state["actor"].params))
            adapters_host = parallel.allgather_host(state["actor"].params) if runner.lora else None
            if writer:
                outputs.save_policy(m, policy_host, run.workdir / "policy")
                if runner.lora:  # the adapters alone too, as a PEFT directory
                    outputs.save_adapters(m, adapters_host, runner.lora, run.workdir / outputs.ADAPTERS_DIR)
            if heldout:
                after = runner.evaluate(runner.policy_params(state["actor"].params), heldout)
                run.write(run.step, after, "eval_")
                evaluate_before = lambda: runner.evaluate(runner.initial_params(), heldout)  # noqa: E731
                baseline = runner.target_baseline(heldout) if runner.target is not None else {}
                extra = dict(
                    baseline,
                    actor_trainable_params=sum(x.size for x in jax.tree.leaves(state["actor"].params)),
                    run_seconds=time.perf_counter() - started,  # this process: a resumed run counts from its resume
                )
                if not writer and not (run.workdir / outputs.EVAL_BEFORE_FILE).exists():
                    evaluate_before()  # process 0 evaluates it (no file; a collective): the others take part
                results = (
                    outputs.write_results(run.workdir, evaluate_before, len(heldout), after, config, data_counts, extra)
                    if writer
                    else {}
                )
                parallel.barrier("rft results")
    return dataclasses.replace(run.result, results=results, data=data_counts)
