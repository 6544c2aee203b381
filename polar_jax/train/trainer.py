"""The trainer: pre-training and SFT of POLAR reward models, read top to bottom.

    python -m polar_jax train --config configs/pretrain_tiny.py --workdir DIR [--config.KEY=VALUE ...]

Pre-training and SFT are this one loop; they differ in data and in `config.model.init`
(a base LM, or a POLAR reward model). Where things are:
    setup.py   config -> model, data sources, optimiser, jitted steps (`aot` reads it too)
    step.py    the pure jitted steps (update with the non-finite guard, held-out sums)
    loop.py    the run loop every trainer uses (checkpoints, metrics, signals, divergence)
This file wires them: the step call, the held-out evaluation hook, the final model.

A rerun with the same workdir resumes from the newest checkpoint (params, optimiser state,
step, RNG, data iterator). SIGTERM / SIGINT finish the current step, save and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import jax
import ml_collections

from polar_jax import run_manifest
from polar_jax.data import encoding, prepare
from polar_jax.data import pipeline as data_pipeline
from polar_jax.io import polar_format, tokenizers
from polar_jax.io.model import Model
from polar_jax.train import loop, objectives, setup
from polar_jax.train.metrics import Throughput
from polar_jax.train.prefetch import DevicePrefetch
from polar_jax.train.state import abstract_state, create_state

log = logging.getLogger(__name__)

# The progress bar's fields: bar name -> (logged metric, format); pairs/s, the tokens the rows
# compute per second and the tokens the unshared layout would compute for the same pairs.
PROGRESS_FIELDS = {
    "loss": ("loss", ".4f"),
    "acc": ("accuracy", ".3f"),
    "pairs/s": ("pairs_per_s", ".1f"),
    "tok/s": ("tokens_per_s", ".0f"),
    "unshared tok/s": ("unshared_tokens_per_s", ".0f"),
}


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True) -> loop.RunResult:
    """Run (or resume) the training described by `config` in `workdir`."""
    with loop.Run(
        config, workdir, inputs=run_manifest.train_inputs(config), total=config.steps, desc="train", progress=progress
    ) as run:
        model = setup.build_model(config)
        log.info(
            "reward model: %.2fM parameters, %d layers, d_model %d",
            model.cfg.num_params() / 1e6,
            model.cfg.num_layers,
            model.cfg.d_model,
        )
        train_source, eval_source = setup.build_sources(config)
        split_sources = setup.eval_split_sources(config)
        train_iter = iter(data_pipeline.build_pipeline(train_source, setup.pipeline_config(config)))
        optimizer, schedule = setup.build_optimizer(config)
        state = run.restore_or_init(
            abstract_state(model.cfg, optimizer, run.mesh),
            lambda: create_state(model.cfg, optimizer, jax.random.key(config.seed), run.mesh, params=model.params),
            train_iter,
        )
        model = dataclasses.replace(model, params=None)  # the host copy of the initial weights is not needed now

        state_sharding = jax.tree.map(lambda x: x.sharding, state)
        batch_sharding = setup.batch_shardings(run.mesh)
        train_step = setup.jit_train_step(config, model.cfg, optimizer, schedule, state_sharding, batch_sharding)
        eval_step = setup.jit_eval_step(config, model.cfg, state_sharding.params, batch_sharding)
        throughput = Throughput(model.cfg, config, run.mesh.size, window=setup.attention_window(config))
        with DevicePrefetch(train_iter, put=lambda local: setup.global_batch(local, batch_sharding)) as batches:

            def step_fn(state, _):
                host_batch, device_batch = next(batches)  # put on the device while the last step ran
                state, metrics = train_step(state, device_batch)
                throughput.add(host_batch)  # counted on the host: no device sync per step
                return state, metrics

            def evaluate_all(step, state, metrics) -> dict:  # several held-out sets: each on its own too
                out = {"eval_": evaluate(eval_step, state.params, eval_source, config, batch_sharding)}
                for name, source in split_sources.items():
                    out[f"eval_{name}_"] = evaluate(eval_step, state.params, source, config, batch_sharding)
                return out

            state = run.loop(
                step_fn,
                state,
                batches,  # its state: the iterator's after the last batch a step took, not the ones fetched ahead
                log_spec=loop.Log(
                    postfix=PROGRESS_FIELDS, read=throughput.read, hint="lower optim.lr or check the data"
                ),
                hooks=(loop.Hook(evaluate_all, every=config.eval_every, at_end=bool(config.eval_every), name="eval"),),
            )
        evaluated = run.hook_outputs.get("eval", {}).get("eval_", {})
        if not evaluated and config.eval_every and run.stopped_by == "done":  # a finished run, rerun
            evaluated = evaluate(eval_step, state.params, eval_source, config, batch_sharding)
        if throughput.peak is None:
            log.info("MFU not reported: %s (set config.peak_tflops)", throughput.peak_source)
        if run.logged:
            log.info("process %d: step %d, loss %.8f", jax.process_index(), run.step, run.logged["loss"])
        if run.finished:
            # The finished model, loadable by `score`, `convert` and as the init of an SFT run.
            save_model(dataclasses.replace(model, params=state.params), run.workdir / "model", config)
            log.info("final model in %s", run.workdir / "model")
        if evaluated:
            log.info(
                "held-out pairs at step %d: accuracy %.3f, loss %.4f (%d pairs)",
                run.step,
                evaluated["accuracy"],
                evaluated["loss"],
                evaluated["pairs"],
            )
    return dataclasses.replace(run.result, eval_metrics=evaluated)


def evaluate(eval_step, params, source, config, batch_sharding) -> dict:
    """Loss and accuracy over `config.eval_batches` batches of the held-out source (same every time),
    the next batches put on the device while a batch is evaluated."""
    totals = None
    stream = iter(data_pipeline.build_pipeline(source, setup.pipeline_config(config, train=False)))
    with DevicePrefetch(stream, put=lambda local: setup.global_batch(local, batch_sharding)) as batches:
        for i, (_, batch) in enumerate(batches):
            if i == config.eval_batches:
                break
            sums = eval_step(params, batch)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    return {k: float(v) for k, v in objectives.finalize(totals).items()} if totals else {}


# encoding.json keys that describe a prepared directory's shards, not the model
_DATA_ONLY_KEYS = ("tokenizer_dir", "records", "shards", "record_version")


def save_model(model: Model, model_dir: pathlib.Path, config) -> None:
    """Write the trained model as a self-contained directory: weights, the base's remote-code
    files if it has any, and (data prepared by `prepare`) the tokenizer as used, in the
    directory itself as HF keeps it, with the encoding (`encoding.json`) and `reward_token_id`
    in its config; `score`, `evaluate`, `rft` and `convert` read them, so no other flag is needed."""
    data_dir = setup.prepared_data_dir(config)
    info = encoding.read_encoding_file(data_dir) if data_dir else None
    if info is not None:
        model = dataclasses.replace(model, hf_config={**model.hf_config, "reward_token_id": info["reward_token_id"]})
    # The base's remote code (InternLM2's *.py files) travels too, so an HF export loads where the released ones do.
    polar_format.save_polar(model, model_dir, code_from=None if config.model.init == "scratch" else config.model.init)
    if info is None or jax.process_index() != 0:
        return
    tokenizers.copy_tokenizer(data_dir / info.get("tokenizer_dir", prepare.TOKENIZER_DIR), model_dir)
    saved = {k: v for k, v in info.items() if k not in _DATA_ONLY_KEYS}
    (model_dir / encoding.ENCODING_FILE).write_text(json.dumps({**saved, "data": str(data_dir)}, indent=2) + "\n")
