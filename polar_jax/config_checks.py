"""Config validation before any work starts: one table per config kind (train, rft, synth,
scaling) of each key's type and range, checked by `check`. A bad value fails with one
ConfigError naming the key, the value, the rule and where the value came from.

Cadences (`log_every`, `checkpoint_every`, `eval_every`) accept 0 = never; the last step of a
run is still logged and saved. A key in neither the table nor the kind's defaults (where it has
a defaults module) is refused with the nearest known names: a misspelt key would otherwise be
ignored. A default without a rule is held to its default's type."""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from polar_jax.config_rules import Float, Int, OneOf, Records, Rule, Seq
from polar_jax.errors import ConfigError

log = logging.getLogger(__name__)

BOOL, STR = Rule("bool"), Rule("str")
NEVER = "0 = never"
HELDOUT = "every N-th document held out; 0 = none"
DTYPES = OneOf("float32", "bfloat16", "float16")
MESH_AXIS = Int(ge=1, also=(-1,), note="-1 takes the rest")
PROBABILITY = Float(ge=0, le=1)


def _optim() -> dict[str, Rule]:
    return {
        "lr": Float(gt=0),
        "b1": Float(ge=0, lt=1),
        "b2": Float(ge=0, lt=1),
        "weight_decay": Float(ge=0),
        "clip_norm": Float(gt=0),
        "warmup_fraction": PROBABILITY,
        "final_lr_fraction": PROBABILITY,
    }


def _prefixed(prefix: str, table: Mapping[str, Rule]) -> dict[str, Rule]:
    return {f"{prefix}.{key}": rule for key, rule in table.items()}


_RUNTIME = {
    "remat": OneOf("none", "full", "dots", "dots_no_batch"),
    "attention_impl": OneOf("auto", "xla", "cudnn", "pallas"),
    "scan_unroll": Int(ge=1),
}

TRAIN: dict[str, Rule] = {
    "seed": Int(ge=0),
    "steps": Int(ge=1),
    "log_every": Int(ge=0, note=NEVER),
    "eval_every": Int(ge=0, note=NEVER),
    "eval_batches": Int(ge=1),
    "checkpoint_every": Int(ge=0, note=NEVER),
    "checkpoint_minutes": Float(gt=0),
    "keep_checkpoints": Int(ge=1),
    "max_bad_steps": Int(ge=1),
    "allow_changed_config": BOOL,
    "start_over": BOOL,
    "accum_steps": Int(ge=1),
    "margin": Float(),
    "peak_tflops": Float(ge=0, note="0 = look it up"),
    "model.init": STR,
    "model.reward_head_init": OneOf("zeros", "normal"),
    **{
        f"model.{size}": Int(ge=1, none=True)
        for size in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
    },
    "model.dtype": DTYPES,
    **_prefixed("model", _RUNTIME),
    "data.kind": OneOf("array_record", "synthetic"),
    "data.train": STR,
    "data.eval": STR,
    "data.synthetic_train_examples": Int(ge=1),
    "data.synthetic_eval_examples": Int(ge=1),
    "data.synthetic_concentration": Float(gt=0),
    "data.synthetic_vocab_size": Int(ge=2),
    "data.batch_size": Int(ge=1),
    "data.seq_len": Int(ge=8),
    "data.max_pairs_per_row": Int(ge=1),
    "data.mode": OneOf("packed", "padded"),
    "data.shared_prefix": BOOL,
    "data.attention_window": Int(ge=-1, note="-1 = the prepared data's longest segment, 0 = whole rows"),
    "data.num_workers": Int(ge=0),
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    **_prefixed("optim", _optim()),
}

_SAMPLING = {"temperature": Float(ge=0), "top_k": Int(ge=0, note="0 = off"), "top_p": Float(gt=0, le=1)}

RFT: dict[str, Rule] = {
    "seed": Int(ge=0),
    "iterations": Int(ge=1),
    "log_every": Int(ge=0, note=NEVER),
    "eval_every": Int(ge=0, note="0 = at the start and end only"),
    "checkpoint_every": Int(ge=0, note=NEVER),
    "checkpoint_minutes": Float(gt=0),
    "keep_checkpoints": Int(ge=1),
    "max_bad_steps": Int(ge=1),
    "allow_changed_config": BOOL,
    "start_over": BOOL,
    "setup_hint": STR,
    "policy.init": STR,
    "policy.trust_remote_code": BOOL,
    "policy.template": STR,
    "policy.chat_template": BOOL,
    "policy.max_prompt_tokens": Int(ge=1),
    "policy.dtype": DTYPES,
    **_prefixed("policy", _RUNTIME),
    "policy.lora.rank": Int(ge=0, note="0 = off"),
    "policy.lora.alpha": Float(gt=0),
    "policy.lora.targets": Seq(OneOf("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")),
    "rollout.prompts": Int(ge=1),
    "rollout.samples_per_prompt": Int(ge=1),
    "rollout.slots": Int(ge=0, note="0 = all rollouts of an iteration at once"),
    "rollout.max_new_tokens": Int(ge=1),
    **_prefixed("rollout", _SAMPLING),
    "rollout.stop": Seq(STR),
    "rollout.loop_max_ngram": Int(ge=0, note="0 = off"),
    "rollout.loop_repeats": Int(ge=2),
    "reward.model": STR,
    "reward.server": STR,
    "reward.api_key": STR,
    "reward.server_wait": Float(gt=0),
    "reward.server_timeout": Float(gt=0),
    "reward.tokenizer": STR,
    "reward.trust_remote_code": BOOL,
    "reward.batch_size": Int(ge=1),
    "reward.shared_prefix": BOOL,
    "reward.strip_think": OneOf("official", "all_spans", "none"),
    "reward.normalize": OneOf("none", "batch", "running", "group"),
    "reward.clip": Seq(Float()),  # () = no clip, or (lo, hi): checked in `_check_rft_combinations`
    "reward.dtype": DTYPES,
    # None = from the reward model's directory, else the official client's defaults
    "reward.encoding.max_length": Int(ge=8, none=True),
    "reward.encoding.max_response_length": Int(ge=1, none=True),
    "reward.encoding.response_cut_side": OneOf("right", "left", none=True),
    "reward.encoding.wrapper": OneOf("sft", "pretrain", none=True),
    "reward.encoding.split_text": Rule("str", none=True),
    "reward.encoding.reward_token": Rule("str", none=True),
    "algorithm.estimator": OneOf("gae", "group", "grpo", "rloo", "reinforce_pp"),
    "algorithm.loss": OneOf("ppo", "gspo"),
    "algorithm.clip_ratio_low": Float(ge=0, none=True, note="None = algorithm.clip_ratio"),
    "algorithm.clip_ratio_high": Float(ge=0, none=True, note="None = algorithm.clip_ratio"),
    "algorithm.overlong_buffer": Int(ge=0, note="0 = off"),
    "algorithm.overlong_penalty": Float(ge=0),
    "algorithm.dynamic_sampling": BOOL,
    "algorithm.max_gen_batches": Int(ge=0, note="0 = no limit"),
    "algorithm.gamma": PROBABILITY,
    "algorithm.lam": PROBABILITY,
    "algorithm.clip_ratio": Float(gt=0),
    "algorithm.clip_ratio_c": Float(gt=1),
    "algorithm.value_clip": Float(gt=0),
    "algorithm.loss_agg": OneOf("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"),
    "algorithm.epochs": Int(ge=1),
    "algorithm.minibatches": Int(ge=1),
    "algorithm.whiten_advantages": BOOL,
    "algorithm.group_normalize_std": BOOL,
    "algorithm.entropy_coef": Float(ge=0),
    "algorithm.kl_coef": Float(ge=0),
    "algorithm.kl_loss_coef": Float(ge=0),
    "algorithm.kl_loss_estimator": OneOf("k1", "abs", "k2", "low_var_kl"),
    "critic.init": OneOf("policy", "reward_model"),
    "critic.value_head_init": OneOf("zeros", "reward_head"),
    "critic.value_head_bias": BOOL,
    "reference.keep": BOOL,
    **_prefixed("actor_optim", _optim()),
    **_prefixed("critic_optim", _optim()),
    "data.kind": OneOf("jsonl", "parquet", "policy_samples"),
    "data.train": STR,
    "data.eval": STR,
    "data.skip_invalid": BOOL,
    "data.filter_overlong_prompts": BOOL,
    "data.truncation": OneOf("error", "left"),
    "data.shuffle": BOOL,
    "data.eval_rows": Int(ge=1),
    "data.prompts": STR,
    "data.prompt_tokens": Seq(Int(ge=1)),
    "data.heldout_every": Int(ge=0, note=HELDOUT),
    "data.train_prompts": Int(ge=1),
    "data.eval_prompts": Int(ge=1),
    "target.checkpoint": STR,
    "target.trust_remote_code": BOOL,
    "target.template": STR,
    "target.system": STR,
    "target.stop": Seq(STR),
    **_prefixed("target", _SAMPLING),
    "target.max_new_tokens": Int(ge=1),
    "target.max_prompt_tokens": Int(ge=1),
    "target.loop_max_ngram": Int(ge=0, note="0 = off"),
    "eval.batch_size": Int(ge=1),
    **_prefixed("eval", _SAMPLING),
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
}

POLICY: dict[str, Rule] = {  # a synth pool entry (synth.pool.PolicySpec)
    "name": STR,
    "checkpoint": STR,
    **_SAMPLING,
    "max_new_tokens": Int(ge=1),
    "system": STR,
    "template": STR,
    "stop": Seq(STR),
    "max_prompt_tokens": Int(ge=1),
    "weight": Float(gt=0),
}

SYNTH: dict[str, Rule] = {
    "seed": Int(ge=0),
    "num_triplets": Int(ge=1),
    "shard_size": Int(ge=1),
    "batch_size": Int(ge=1),
    "prompt_bucket": Int(ge=1),
    "policies": Records(POLICY),
    "draw_from": Seq(STR),
    "must_include": Seq(STR),
    "prompts.corpus": STR,
    "prompts.split": OneOf("train", "heldout", "all"),
    "prompts.heldout_every": Int(ge=0, note=HELDOUT),
    "prompts.min_tokens": Int(ge=1),
    "prompts.max_tokens": Int(ge=1),
    "prompts.tokenizer": STR,
    "prompts.instructions": STR,
    "prompts.instruction_fraction": PROBABILITY,
}

SCALING: dict[str, Rule] = {
    **_prefixed("train", TRAIN),
    "family.aspect_ratio": Int(ge=1),
    "family.head_dim": Int(ge=1),
    "family.kv_group": Int(ge=1),
    "family.mlp_multiple": Int(ge=1),
    "layers": Seq(Int(ge=1)),
    "base_models": STR,
    "budget.kind": OneOf("steps", "tokens", "tokens_per_param"),
    "budget.value": Float(gt=0),
    "budget.fill": Float(gt=0, le=1),
    "lr.rule": OneOf("fixed", "paper"),
    "lr.base_tokens_m": Float(ge=0),
    "batch.rule": OneOf("fixed", "paper"),
    "batch.pairs_per_row": Float(gt=0),
    "batch.multiple": Int(ge=1),
    "evals_per_run": Int(ge=1),
    "logs_per_run": Int(ge=1),
    "checkpoints_per_run": Int(ge=1),
    "fit_params": OneOf("non_embedding", "total"),
    "seeds": Seq(Int(ge=0)),
    "data_dir": STR,
    "eval_split": STR,
    "data_hint": STR,
}

TABLES = {"train": TRAIN, "rft": RFT, "synth": SYNTH, "scaling": SCALING}
# Where a kind's defaults live: keys there are known even without a rule (their type is the default's).
DEFAULTS = {"train": "polar_jax.train.defaults", "rft": "polar_jax.rft.defaults"}


def defaults(kind: str) -> dict[str, Any]:
    """The flattened defaults of a config kind ({} where there is no defaults module)."""
    if kind == "scaling":
        return {f"train.{k}": v for k, v in defaults("train").items()}
    if kind not in DEFAULTS:
        return {}
    return flatten(importlib.import_module(DEFAULTS[kind]).base_config())


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values of a (nested) ConfigDict / dict by dotted key."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and not isinstance(value, (str, bytes)):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_difference(old: Mapping, new: Mapping, limit: int = 5, ignore: tuple[str, ...] = ()) -> str:
    """The differing keys of two (nested) configs as text, at most `limit` of them ("" when
    equal); keys equal to or under an `ignore` entry ("mesh" covers "mesh.fsdp") are skipped."""
    a, b = flatten(old), flatten(new)

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in ignore)

    diffs = [
        f"{key}: {a.get(key, '<absent>')!r} there, {b.get(key, '<absent>')!r} now"
        for key in sorted(set(a) | set(b))
        if not ignored(key) and a.get(key, "<absent>") != b.get(key, "<absent>")
    ]
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def check(config: Any, kind: str, source: str = "the config", overrides=()) -> None:
    """Raise ConfigError on the first key of `config` that its kind's table refuses, or that neither
    the table nor the defaults know. `source` (the config file) and `overrides` (--config.KEY=VALUE)
    say where a value came from."""
    known = defaults(kind)
    table = {**{k: _type_rule(v) for k, v in known.items() if k not in TABLES[kind]}, **TABLES[kind]}
    _check_table(flatten(config), table, "config.", source, overrides)
    if kind == "rft":
        _check_rft_combinations({**known, **flatten(config)}, source, overrides)


GROUP_BASELINES = ("group", "grpo")  # estimators whose per-group z-score undoes any affine map of the scores


def _check_rft_combinations(values: Mapping[str, Any], source: str, overrides) -> None:
    """Keys of an RFT config that are fine alone but not together: refused with a ConfigError
    naming them, or (where the run is valid but a setting does nothing) logged as a warning."""
    k = values["rollout.samples_per_prompt"]
    where = lambda name: _where(f"config.{name}", source, overrides)  # noqa: E731
    clip = tuple(values["reward.clip"])
    if clip and (len(clip) != 2 or not clip[0] < clip[1]):
        raise ConfigError(
            f"config.reward.clip={clip!r} ({where('reward.clip')}): must be () (no clip) or (lo, hi) with lo < hi"
        )
    if values["reward.normalize"] == "group" and k < 2:
        raise ConfigError(
            f"config.reward.normalize='group' ({where('reward.normalize')}) z-scores each prompt's rollouts, but "
            f"config.rollout.samples_per_prompt={k} ({where('rollout.samples_per_prompt')}): every score would be "
            "0; sample >= 2 rollouts per prompt, or use 'batch' / 'running'"
        )
    if values["algorithm.dynamic_sampling"] and k < 2:
        raise ConfigError(
            f"config.algorithm.dynamic_sampling=True ({where('algorithm.dynamic_sampling')}) drops the prompts whose "
            f"rollouts all score the same, but config.rollout.samples_per_prompt={k} "
            f"({where('rollout.samples_per_prompt')}): sample >= 2 rollouts per prompt"
        )
    if values["algorithm.max_gen_batches"] and not values["algorithm.dynamic_sampling"]:
        log.warning("config.algorithm.max_gen_batches is set but algorithm.dynamic_sampling is off: it has no effect")
    if (
        values["reward.normalize"] != "none"
        and not clip
        and values["algorithm.estimator"] in GROUP_BASELINES
        and values["algorithm.group_normalize_std"]
    ):
        log.warning(
            "config.reward.normalize=%r with algorithm.estimator=%r: the group baseline's own z-score undoes the "
            "normalisation (up to its eps); it changes nothing unless reward.clip binds",
            values["reward.normalize"],
            values["algorithm.estimator"],
        )


def _type_rule(default: Any) -> Rule:
    """The rule of a key with a default but no entry in its table: the default's type."""
    if default is None:
        return Rule("any")
    if isinstance(default, bool):
        return BOOL
    if isinstance(default, (list, tuple)):
        return Seq()
    return {int: Int(), float: Float(), str: STR}.get(type(default), Rule("any"))


def _check_table(values: Mapping[str, Any], table: Mapping[str, Rule], prefix: str, source: str, overrides) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        rule = table.get(key)
        if rule is None:
            nearest = difflib.get_close_matches(key, list(table), n=3, cutoff=0.6)
            hint = (
                f"; did you mean {', '.join(prefix + n for n in nearest)}?"
                if nearest
                else "; remove it, or check the key against the defaults"
            )
            raise ConfigError(f"{name} ({_where(name, source, overrides)}) is not a known key{hint}")
        if not rule.accepts(value):
            raise ConfigError(f"{name}={value!r} ({_where(name, source, overrides)}): must be {rule.describe()}")
        if rule.kind == "records":
            for i, item in enumerate(value):
                if not hasattr(item, "items"):
                    raise ConfigError(f"{name}[{i}]={item!r} ({source}): must be a dict of {', '.join(rule.fields)}")
                _check_table(flatten(item), rule.fields, f"{name}[{i}].", source, overrides)


def _where(name: str, source: str, overrides) -> str:
    """Where a key's value came from: the override that set it, or the config file."""
    for item in reversed(list(overrides)):
        if item.removeprefix("--").partition("=")[0] == name:
            return f"set by {item}"
    return f"in {source}"
