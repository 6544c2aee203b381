"""The trainer: pre-training and SFT of POLAR reward models, read top to bottom.

    python -m polar_jax train --config configs/pretrain_tiny.py --workdir DIR [--config.KEY=VALUE ...]

Pre-training and SFT are this one loop; they differ in data and in `config.model.init`
(a base LM, or a POLAR reward model). The jitted step functions live in `step.py`; this file
only drives them: setup, model, data, optimiser, checkpoint, loop.

A rerun with the same workdir resumes from the newest checkpoint (params, optimiser state,
step, RNG, data iterator). SIGTERM / SIGINT finish the current step, save and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from polar_jax import parallel, run_manifest
from polar_jax.data import pipeline as data_pipeline
from polar_jax.data import encoding, prepare, sources, synthetic
from polar_jax.io import checkpoint, models, polar_format
from polar_jax.io.hf import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig
from polar_jax.models.vocab import grow_vocab
from polar_jax.flops import peak_tflops, train_flops_per_token
from polar_jax.train import objectives, step as steps
from polar_jax.train.metrics import MetricsWriter
from polar_jax.train.optim import OptimConfig, lr_schedule, make_optimizer
from polar_jax.train.state import abstract_state, create_state

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    """How a run ended: its last step, why it stopped, and the last logged metrics."""

    step: int
    stopped_by: str  # "done" | "signal"
    metrics: dict  # the last logged training metrics
    eval_metrics: dict  # the last evaluation on the held-out split


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True) -> RunResult:
    """Run (or resume) the training described by `config` in `workdir`."""
    # ------------------------------------------------------------------------------ setup
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = json.loads(config.to_json())
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    mesh = parallel.make_mesh(dict(config.mesh))
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].device_kind)
    run_manifest.write(workdir, config, run_manifest.train_inputs(config), mesh=mesh)  # run.json; warns on changed inputs

    # ------------------------------------------------------------------------------ model
    model = build_model(config)
    model_cfg, init_params = model.cfg, model.params
    log.info("reward model: %.2fM parameters, %d layers, d_model %d", model_cfg.num_params() / 1e6,
             model_cfg.num_layers, model_cfg.d_model)

    # ------------------------------------------------------------------------------ data
    train_source, eval_source = build_sources(config)
    split_sources = eval_split_sources(config)
    if config.data.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={config.data.batch_size} must divide over {jax.process_count()} processes")
    pipeline_cfg = data_pipeline.PipelineConfig(
        batch_size=config.data.batch_size // jax.process_count(), seq_len=config.data.seq_len,
        max_pairs_per_row=config.data.max_pairs_per_row, seed=config.seed, mode=config.data.mode,
        num_workers=config.data.num_workers, shard_index=jax.process_index(), shard_count=jax.process_count(),
    )
    train_iter = iter(data_pipeline.build_pipeline(train_source, pipeline_cfg))

    # ------------------------------------------------------------------------------ optimiser
    optimizer, schedule = build_optimizer(config)

    # ------------------------------------------------------------------------------ checkpoint
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    target = abstract_state(model_cfg, optimizer, mesh)
    start_step, state = ckpt.restore_latest(target, train_iter)
    if state is None:
        state = create_state(model_cfg, optimizer, jax.random.key(config.seed), mesh, params=init_params)
        start_step = 0
    else:
        log.info("resumed from %s step %d", ckpt.directory, start_step)
    del init_params

    # ------------------------------------------------------------------------------ compile
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = batch_shardings(mesh)
    train_step = jit_train_step(config, model_cfg, optimizer, schedule, state_sharding, batch_sharding)
    eval_step = jax.jit(functools.partial(steps.eval_step, model_cfg=model_cfg, margin=config.margin),
                        in_shardings=(state_sharding.params, batch_sharding))

    # ------------------------------------------------------------------------------ loop
    writer = MetricsWriter(workdir, resume_step=start_step)
    peak, peak_source = peak_tflops(config.peak_tflops)
    flops_per_token = train_flops_per_token(model_cfg, config.data.seq_len)
    stop = StopOnSignal()
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step", disable=not progress)
    last_save, window_start, window_tokens, logged, evaluated = time.monotonic(), time.perf_counter(), 0.0, {}, {}
    step = start_step
    try:
        with parallel.use_rules(mesh):
            while step < config.steps:
                batch = _global_batch(next(train_iter), batch_sharding)
                state, metrics = train_step(state, batch)
                step += 1
                bar.update(1)
                window_tokens = window_tokens + metrics["tokens"]  # stays on device: no sync per step
                # 0 = never (config_checks): the last step is still logged and saved
                at_log = step == config.steps or bool(config.log_every) and step % config.log_every == 0
                at_save = step == config.steps or bool(config.checkpoint_every) and step % config.checkpoint_every == 0
                # Reading the guard's counter waits for the step, so only where we stop anyway; skipped
                # steps leave the parameters untouched, so a late stop loses no good work.
                diverged = (at_log or at_save) and int(metrics["bad_streak"]) >= config.max_bad_steps
                if at_log or diverged:
                    seconds = time.perf_counter() - window_start
                    logged = {k: float(v) for k, v in metrics.items()}
                    logged["tokens_per_s"] = float(window_tokens) / seconds
                    if peak:
                        logged["mfu"] = logged["tokens_per_s"] * flops_per_token / (peak * 1e12 * mesh.size)
                    writer.write(step, logged)
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", acc=f"{logged['accuracy']:.3f}")
                    window_start, window_tokens = time.perf_counter(), 0.0
                if diverged:
                    raise TrainingDiverged(
                        f"{config.max_bad_steps} non-finite steps in a row (loss, gradient or update NaN/Inf) up to "
                        f"step {step}; stopping. The last good checkpoint is in {ckpt.directory} (steps "
                        f"{ckpt.steps()}); lower optim.lr or check the data")
                if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                    evaluated = evaluate(eval_step, state.params, eval_source, config, batch_sharding)
                    writer.write(step, evaluated, "eval_")
                    for name, source in split_sources.items():  # several held-out sets: each on its own too
                        writer.write(step, evaluate(eval_step, state.params, source, config, batch_sharding),
                                     f"eval_{name}_")
                minutes = (time.monotonic() - last_save) / 60
                if stop.requested:
                    log.warning("%s received: saving step %d and exiting", stop.requested, step)
                # One save per step: saving a step twice makes orbax raise StepAlreadyExistsError.
                if at_save or minutes >= config.checkpoint_minutes or stop.requested:
                    ckpt.save(step, state, train_iter, resolved, force=True)
                    last_save = time.monotonic()
                if stop.requested:
                    break
            if not evaluated and config.eval_every and not stop.requested:  # a finished run, rerun
                evaluated = evaluate(eval_step, state.params, eval_source, config, batch_sharding)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        stop.restore()
    if peak is None:
        log.info("MFU not reported: %s (set config.peak_tflops)", peak_source)
    if logged:
        log.info("process %d: step %d, loss %.8f", jax.process_index(), step, logged["loss"])
    if step == config.steps and not stop.requested:
        # The finished model, loadable by `score`, `convert` and as the init of an SFT run.
        save_model(Model(model_cfg, state.params, model.family, model.hf_config), workdir / "model", config)
        log.info("final model in %s", workdir / "model")
    if evaluated:
        log.info("held-out pairs at step %d: accuracy %.3f, loss %.4f (%d pairs)", step, evaluated["accuracy"],
                 evaluated["loss"], evaluated["pairs"])
    log.info("metrics in %s, TensorBoard events in %s", workdir / "metrics.jsonl", workdir / "tensorboard")
    return RunResult(step=step, stopped_by="signal" if stop.requested else "done", metrics=logged,
                     eval_metrics=evaluated)


# encoding.json keys that describe a prepared directory's shards, not the model
_DATA_ONLY_KEYS = ("tokenizer_dir", "records", "shards", "record_version")


def save_model(model: Model, model_dir: pathlib.Path, config) -> None:
    """Write the trained model as a self-contained directory: weights, the base's remote-code
    files if it has any, and (data prepared by `prepare`) the tokenizer as used, in the
    directory itself as HF keeps it, with the encoding (`encoding.json`) and `reward_token_id`
    in its config; `score`, `evaluate`, `rft` and `convert` read them, so no other flag is needed."""
    data_dir = prepared_data_dir(config)
    info = encoding.read_encoding_file(data_dir) if data_dir else None
    if info is not None:
        model = dataclasses.replace(model, hf_config={**model.hf_config, "reward_token_id": info["reward_token_id"]})
    # The base's remote code (InternLM2's *.py files) travels too, so an HF export loads where the released ones do.
    polar_format.save_polar(model, model_dir, code_from=None if config.model.init == "scratch" else config.model.init)
    if info is None or jax.process_index() != 0:
        return
    models.copy_tokenizer(data_dir / info.get("tokenizer_dir", prepare.TOKENIZER_DIR), model_dir)
    saved = {k: v for k, v in info.items() if k not in _DATA_ONLY_KEYS}
    (model_dir / encoding.ENCODING_FILE).write_text(json.dumps({**saved, "data": str(data_dir)}, indent=2) + "\n")


def prepared_data_dir(config) -> pathlib.Path | None:
    """The first `data.train` directory written by `prepare` (it holds encoding.json and the
    tokenizer the ids came from); None for synthetic data or bare shard files."""
    if config.data.kind != "array_record":
        return None
    first = pathlib.Path(config.data.train.split(",")[0])
    return first if (first / encoding.ENCODING_FILE).is_file() else None


def _global_batch(local: dict, shardings: dict) -> dict:
    """This process's rows -> global arrays sharded over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(local[k])) for k in shardings}


def build_optimizer(config):
    """(optimizer, learning-rate schedule) of `config.optim` over `config.steps`."""
    optim_cfg = OptimConfig(**config.optim)
    return make_optimizer(optim_cfg, config.steps), lr_schedule(optim_cfg, config.steps)


def batch_shardings(mesh) -> dict:
    """The sharding of every array of the step's batch contract (`step.BATCH_NDIM`) on `mesh`."""
    return {k: parallel.batch_sharding(mesh, ndim=n) for k, n in steps.BATCH_NDIM.items()}


def jit_train_step(config, model_cfg: ModelConfig, optimizer, schedule, state_sharding, batch_sharding):
    """The jitted update step exactly as `train` runs it (the `compile` command lowers this one too)."""
    return jax.jit(
        functools.partial(steps.train_step, model_cfg=model_cfg, optimizer=optimizer, schedule=schedule,
                          accum_steps=config.accum_steps, margin=config.margin),
        in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None), donate_argnums=0,
    )


def evaluate(eval_step, params, source, config, batch_sharding) -> dict:
    """Loss and accuracy over `config.eval_batches` batches of the held-out source (same every time)."""
    pipeline_cfg = data_pipeline.PipelineConfig(
        batch_size=config.data.batch_size // jax.process_count(), seq_len=config.data.seq_len,
        max_pairs_per_row=config.data.max_pairs_per_row, seed=config.seed, shuffle=False, num_epochs=1,
        mode=config.data.mode, shard_index=jax.process_index(), shard_count=jax.process_count(),
    )
    totals = None
    for i, batch in enumerate(data_pipeline.build_pipeline(source, pipeline_cfg)):
        if i == config.eval_batches:
            break
        sums = eval_step(params, _global_batch(batch, batch_sharding))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    return {k: float(v) for k, v in objectives.finalize(totals).items()} if totals else {}


def build_model(config) -> Model:
    """The reward model: config, initial parameters (None: random init under jit), family and
    HF config (what an export writes).

    `model.init`: "scratch" (sizes from the config), a base LM (the LM head is dropped and a
    reward head added, zero or normal init) or a POLAR reward model (SFT) in any format.
    """
    m = config.model
    if m.init == "scratch":
        cfg = model_config_from_sizes(config)
        return Model(cfg, None, "llama", families.hf_config_for(cfg, "llama", "reward"))
    model = models.load_model(m.init, **_runtime(m))
    params = dict(model.params)
    cfg = model.cfg
    mismatched = [f"{k}: config {m[k]} vs checkpoint {getattr(cfg, k)}" for k in _SIZE_FIELDS
                  if m[k] is not None and m[k] != getattr(cfg, k)]
    if mismatched:
        raise ValueError(f"config.model sizes do not match {m.init}: {'; '.join(mismatched)}")
    if "reward" not in cfg.heads:  # a base LM: pre-training starts here
        params.pop("lm_head", None)
        rng = np.random.default_rng(config.seed)
        std = 1.0 / np.sqrt(cfg.d_model)
        params["reward_head"] = (np.zeros(cfg.d_model, np.float32) if m.reward_head_init == "zeros"
                                 else (rng.standard_normal(cfg.d_model) * std).astype(np.float32))
        cfg = cfg.replace(heads=("reward",), tie_embeddings=False)
    vocab = _data_vocab_size(config)
    if config.data.kind == "synthetic" and config.data.synthetic_vocab_size > cfg.vocab_size:
        raise ValueError(f"data.synthetic_vocab_size={config.data.synthetic_vocab_size} exceeds the model's "
                         f"vocabulary ({cfg.vocab_size})")
    if vocab and vocab > cfg.vocab_size:
        log.info("growing the vocabulary %d -> %d for the tokens `prepare` added", cfg.vocab_size, vocab)
        cfg, params = grow_vocab(cfg, params, vocab, jax.random.key(config.seed))
    return Model(cfg, params, model.family, model.hf_config)


_SIZE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")


def model_config_from_sizes(config, heads: tuple[str, ...] = ("reward",)) -> ModelConfig:
    """The decoder of `config.model`'s sizes and runtime settings, no checkpoint read: what
    init=scratch trains, and what ahead-of-time compilation assumes for any init."""
    m = config.model
    missing = [k for k in _SIZE_FIELDS if m[k] is None]
    if missing:
        raise ValueError(f"config.model.{', config.model.'.join(missing)} not set: the sizes come from the config "
                         f"here (model.init={m.init}); set them with --config.model.KEY=VALUE")
    return ModelConfig(**{k: m[k] for k in _SIZE_FIELDS}, heads=tuple(heads), **_runtime(m))


def _runtime(m) -> dict:
    return dict(dtype=m.dtype, remat=m.remat, attention_impl=m.attention_impl, scan_unroll=m.scan_unroll)


def _data_vocab_size(config) -> int | None:
    data_dir = prepared_data_dir(config)
    return encoding.read_encoding_file(data_dir).get("vocab_size") if data_dir else None


def build_sources(config):
    """(train, eval) random-access sources of triplet records."""
    d = config.data
    if d.kind == "synthetic":
        syn = synthetic.SyntheticConfig(vocab_size=d.synthetic_vocab_size, seed=config.seed,
                                        concentration=d.synthetic_concentration)
        return (synthetic.SyntheticTriplets(syn, d.synthetic_train_examples),
                synthetic.SyntheticTriplets(syn, d.synthetic_eval_examples, offset=d.synthetic_train_examples))
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


class StopOnSignal:
    """Turns SIGTERM / SIGINT into a request the loop honours after the current step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
