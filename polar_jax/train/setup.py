"""Pre-training / SFT set-up: from a config to the model, the data, the optimiser and the
compiled step. The trainer (`trainer.train`) and ahead-of-time compilation (`aot`) both read
it, so what `compile` lowers is what `train` runs.

Config sections read: model (init, sizes, runtime settings), data (kind, paths, batch
contract sizes), optim, steps, seed, accum_steps, margin.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pathlib

import jax
import numpy as np

from polar_jax import parallel
from polar_jax.data import batch as batch_contract
from polar_jax.data import encoding, sources, synthetic
from polar_jax.data import pipeline as data_pipeline
from polar_jax.errors import ConfigError
from polar_jax.io import models
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig, runtime_settings
from polar_jax.models.vocab import grow_vocab
from polar_jax.train import step as steps
from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ model

SIZE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")


def build_model(config) -> Model:
    """The reward model: config, initial parameters (None: random init under jit), family and
    HF config (what an export writes).

    `model.init`: "scratch" (sizes from the config), a base LM (the LM head is dropped and a
    reward head added, zero or normal init) or a POLAR reward model (SFT) in any format.
    """
    m = config.model
    data_info = check_prepared_data(config)
    if m.init == "scratch":
        cfg = model_config_from_sizes(config)
        _check_data_vocab(config, cfg, data_info)
        return Model(cfg, None, "llama", families.hf_config_for(cfg, "llama", "reward"))
    model = models.load_model(m.init, **runtime_settings(m))
    params = dict(model.params)
    cfg = model.cfg
    mismatched = [
        f"{k}: config {m[k]} vs checkpoint {getattr(cfg, k)}"
        for k in SIZE_FIELDS
        if m[k] is not None and m[k] != getattr(cfg, k)
    ]
    if mismatched:
        raise ValueError(f"config.model sizes do not match {m.init}: {'; '.join(mismatched)}")
    if "reward" not in cfg.heads:  # a base LM: pre-training starts here
        params.pop("lm_head", None)
        rng = np.random.default_rng(config.seed)
        std = 1.0 / np.sqrt(cfg.d_model)
        params["reward_head"] = (
            np.zeros(cfg.d_model, np.float32)
            if m.reward_head_init == "zeros"
            else (rng.standard_normal(cfg.d_model) * std).astype(np.float32)
        )
        cfg = cfg.replace(heads=("reward",), tie_embeddings=False)
    vocab = data_info.get("vocab_size")
    _check_data_vocab(config, cfg, {})  # synthetic data; prepared data grows the embedding instead
    if vocab and vocab > cfg.vocab_size:
        log.info("growing the vocabulary %d -> %d for the tokens `prepare` added", cfg.vocab_size, vocab)
        cfg, params = grow_vocab(cfg, params, vocab, jax.random.key(config.seed))
    return Model(cfg, params, model.family, model.hf_config)


def model_config_from_sizes(config, heads: tuple[str, ...] = ("reward",)) -> ModelConfig:
    """The decoder of `config.model`'s sizes and runtime settings, no checkpoint read: what
    init=scratch trains, and what ahead-of-time compilation assumes for any init."""
    m = config.model
    missing = [k for k in SIZE_FIELDS if m[k] is None]
    if missing:
        raise ValueError(
            f"config.model.{', config.model.'.join(missing)} not set: the sizes come from the config "
            f"here (model.init={m.init}); set them with --config.model.KEY=VALUE"
        )
    return ModelConfig(**{k: m[k] for k in SIZE_FIELDS}, heads=tuple(heads), **runtime_settings(m))


def _check_data_vocab(config, cfg: ModelConfig, data_info: dict) -> None:
    """The data's token ids must fit the model's vocabulary: synthetic data by its
    synthetic_vocab_size, prepared data (a model from scratch, whose size the config fixes)
    by the vocabulary of the tokenizer it was prepared with."""
    d = config.data
    if d.kind == "synthetic" and d.synthetic_vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"data.synthetic_vocab_size={d.synthetic_vocab_size} exceeds the model's vocabulary ({cfg.vocab_size})"
        )
    vocab = data_info.get("vocab_size")
    if vocab and vocab > cfg.vocab_size:
        raise ConfigError(
            f"config.model.vocab_size={cfg.vocab_size}, but {data_info['dir']} was prepared with a tokenizer of "
            f"{vocab} tokens (ids up to {vocab - 1}): embedding lookups past the table would read the wrong rows. "
            f"Set --config.model.vocab_size={vocab} (or more), or prepare the data with a tokenizer that fits"
        )


# ------------------------------------------------------------------------------------ inputs agree

AGREEING_FIELDS = ("vocab_size", "reward_token_id", "tokenizer")  # what every prepared directory must share


def check_prepared_data(config) -> dict:
    """Every prepared directory of data.train and data.eval must come from one tokenizer: the same
    vocabulary, reward token and tokenizer files (`tokenizer_fingerprint`). Returns the first
    one's encoding.json with "dir" and "tokenizer" added ({} for synthetic data or bare shards)."""
    if config.data.kind != "array_record":
        return {}
    seen = []
    for key in ("train", "eval"):
        for item in [i for i in str(config.data[key] or "").split(",") if i]:
            info = encoding.read_encoding_file(item) if pathlib.Path(item).is_dir() else None
            if info is not None:
                tok_dir = pathlib.Path(item) / info.get("tokenizer_dir", "tokenizer")
                seen.append((f"data.{key}", {**info, "dir": item, "tokenizer": tokenizer_fingerprint(tok_dir)}))
    for key, info in seen[1:]:
        first_key, first = seen[0]
        differ = [f for f in AGREEING_FIELDS if info.get(f) != first.get(f)]
        if differ:
            shown = ", ".join(f"{f} {first.get(f)!r} vs {info.get(f)!r}" for f in differ if f != "tokenizer")
            raise ConfigError(
                f"{key} {info['dir']} and {first_key} {first['dir']} were prepared with different tokenizers "
                f"({shown or 'different tokenizer files'}): their ids mean different tokens. Prepare both with the "
                f"same --tokenizer"
            )
    return seen[0][1] if seen else {}


def tokenizer_fingerprint(directory: pathlib.Path) -> str | None:
    """sha256 over the names and bytes of a tokenizer directory's files (None when it has none)."""
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ data


def prepared_data_dir(config) -> pathlib.Path | None:
    """The first `data.train` directory written by `prepare` (it holds encoding.json and the
    tokenizer the ids came from); None for synthetic data or bare shard files."""
    if config.data.kind != "array_record":
        return None
    first = pathlib.Path(config.data.train.split(",")[0])
    return first if (first / encoding.ENCODING_FILE).is_file() else None


def build_sources(config):
    """(train, eval) random-access sources of triplet records."""
    d = config.data
    if d.kind == "synthetic":
        syn = synthetic.SyntheticConfig(
            vocab_size=d.synthetic_vocab_size, seed=config.seed, concentration=d.synthetic_concentration
        )
        return (
            synthetic.SyntheticTriplets(syn, d.synthetic_train_examples),
            synthetic.SyntheticTriplets(syn, d.synthetic_eval_examples, offset=d.synthetic_train_examples),
        )
    if d.kind == "array_record":
        if not d.train or not d.eval:
            raise ValueError("data.kind=array_record needs data.train and data.eval (directories written by `prepare`)")
        return (sources.ArrayRecordTriplets(_paths(d.train)), sources.ArrayRecordTriplets(_paths(d.eval)))
    raise ValueError(f"data.kind={d.kind!r}; choose synthetic or array_record")


def eval_split_sources(config) -> dict:
    """When `data.eval` names several comma-separated held-out sets (array_record), each one
    alone, keyed by its directory's name (e.g. heldout_prompts): their metrics are logged as
    eval_<name>_loss, ... beside the pooled eval_loss. Empty for one set or synthetic data."""
    d = config.data
    items = [item for item in d.eval.split(",") if item] if d.kind == "array_record" else []
    if len(items) < 2:
        return {}
    names = [pathlib.Path(item.rstrip("/")).name or f"split{i}" for i, item in enumerate(items)]
    if len(set(names)) < len(names):  # two sets with one name: number them instead
        names = [f"split{i}" for i in range(len(items))]
    return {name: sources.ArrayRecordTriplets(_paths(item)) for name, item in zip(names, items)}


def _paths(spec: str) -> list[str]:
    out = []
    for item in spec.split(","):
        out += sources.find_shards(item) if pathlib.Path(item).is_dir() else [item]
    return out


def pipeline_config(config, train: bool = True) -> data_pipeline.PipelineConfig:
    """This process's share of the batch stream: shuffled and endless for training; in order,
    one epoch, for evaluation (the same batches every time)."""
    d = config.data
    if d.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={d.batch_size} must divide over {jax.process_count()} processes")
    order = dict(num_workers=d.num_workers) if train else dict(shuffle=False, num_epochs=1)
    return data_pipeline.PipelineConfig(
        batch_size=d.batch_size // jax.process_count(),
        seq_len=d.seq_len,
        max_pairs_per_row=d.max_pairs_per_row,
        seed=config.seed,
        mode=d.mode,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        shared_prefix=bool(d.shared_prefix),
        attention_window=attention_window(config),
        **order,
    )


def attention_window(config) -> int:
    """The longest segment the rows may hold (0: no promise, whole-row attention): data.attention_window,
    or with -1 the longest segment of the prepared data (its stats.json, in the configured layout)."""
    d = config.data
    if d.attention_window >= 0:
        return 0 if d.attention_window >= d.seq_len else int(d.attention_window)
    longest = 0
    for item in [i for key in ("train", "eval") for i in str(d[key] or "").split(",") if i]:
        stats_path = pathlib.Path(item) / "stats.json"
        stats = json.loads(stats_path.read_text()) if d.kind == "array_record" and stats_path.is_file() else {}
        field = "shared_pair_length" if d.shared_prefix else "sequence_length"
        if "max" not in stats.get(field, {}):
            return 0  # data without the statistic (bare shards, synthetic, older prepare): whole rows
        longest = max(longest, int(stats[field]["max"]))
    return longest if 0 < longest < d.seq_len else 0


# ------------------------------------------------------------------------------------ step


def build_optimizer(config):
    """(optimizer, learning-rate schedule) of `config.optim` over `config.steps`."""
    optim_cfg = OptimConfig(**config.optim)
    return make_optimizer(optim_cfg, config.steps), lr_schedule(optim_cfg, config.steps)


def batch_shardings(mesh) -> dict:
    """The sharding of every array the step reads (the batch contract, `data/batch.py`) on `mesh`."""
    return {k: parallel.batch_sharding(mesh, ndim=batch_contract.ndim(k)) for k in batch_contract.STEP_KEYS}


def abstract_batch(config, mesh) -> dict:
    """One global batch as sharded `jax.ShapeDtypeStruct`s at config.data's sizes: what the
    `compile` command lowers the step over."""
    d = config.data
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if d.batch_size % shards:
        raise ValueError(f"data.batch_size={d.batch_size} does not divide over data x fsdp = {shards} devices")
    shardings = batch_shardings(mesh)
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
        for k, (shape, dtype) in batch_contract.shapes(d.batch_size, d.seq_len, d.max_pairs_per_row).items()
    }


def global_batch(local: dict, shardings: dict) -> dict:
    """This process's rows -> global arrays sharded over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(local[k])) for k in shardings}


def jit_train_step(config, model_cfg: ModelConfig, optimizer, schedule, state_sharding, batch_sharding):
    """The jitted update step exactly as `train` runs it (the `compile` command lowers this one too)."""
    return jax.jit(
        functools.partial(
            steps.train_step,
            model_cfg=model_cfg,
            optimizer=optimizer,
            schedule=schedule,
            accum_steps=config.accum_steps,
            margin=config.margin,
            attention_window=attention_window(config),
            shared_prefix=bool(config.data.shared_prefix),
        ),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )


def jit_eval_step(config, model_cfg: ModelConfig, params_sharding, batch_sharding):
    """The jitted held-out step: loss and accuracy sums of one batch."""
    return jax.jit(
        functools.partial(
            steps.eval_step,
            model_cfg=model_cfg,
            margin=config.margin,
            attention_window=attention_window(config),
            shared_prefix=bool(config.data.shared_prefix),
        ),
        in_shardings=(params_sharding, batch_sharding),
    )
