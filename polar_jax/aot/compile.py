"""The driver: topology -> mesh -> lower one stage's step -> compile -> report."""

from __future__ import annotations

import pathlib
import re
import time

from polar_jax.aot import engine_stage, rft_stage, sample_stage, train_stage
from polar_jax.aot.counting import cost_analysis_flops, count_collectives
from polar_jax.aot.report import Report
from polar_jax.aot.topology import Topology, get_topology

STAGES = ("train", "sample", "engine", "rft")


class StageUnavailable(RuntimeError):
    """The asked-for stage has no step to compile (yet)."""


def compile_step(
    config,
    topology: str | Topology,
    stage: str = "train",
    config_name: str = "config",
    sample_batch: int | None = None,
    prompt_len: int = 1024,
    max_new_tokens: int = 4096,
    hlo_path: str | None = None,
) -> Report:
    """Lower and compile `stage`'s step of `config` for `topology`; the report says if it fits.

    "train": the trainer's update step over the config's batch. "sample": the KV-cache
    sampler (`sampling.generate`) of the config's model as a causal LM, `sample_batch`
    prompts (default data.batch_size) of `prompt_len` tokens plus `max_new_tokens`.
    "engine": one decode call of the continuous-batching engine, `sample_batch` slots with caches
    of `prompt_len` + `max_new_tokens`.
    "rft": the PPO update of an RFT config (`rft.step.ppo_update`: actor and critic states,
    one rollout batch), model shapes from the configs of policy.init / reward.model (no weights
    read). `hlo_path`: write the compiled HLO text there.
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {', '.join(STAGES)}")
    if stage == "rft":
        rft_models = rft_stage.rft_model_configs(config)  # a config that is not an RFT run's fails before libtpu starts
    topo = topology if isinstance(topology, Topology) else get_topology(topology)
    from polar_jax import parallel

    mesh = parallel.make_mesh(dict(config.mesh), list(topo.devices))
    if stage == "train":
        lowered, report = train_stage.lower(config, mesh)
    elif stage == "rft":
        lowered, report = rft_stage.lower(config, mesh, *rft_models)
    elif stage == "engine":
        lowered, report = engine_stage.lower(
            config, mesh, sample_batch or config.data.batch_size, prompt_len, max_new_tokens
        )
    else:
        lowered, report = sample_stage.lower(
            config, mesh, sample_batch or config.data.batch_size, prompt_len, max_new_tokens
        )
    report.config, report.stage, report.topology = config_name, stage, topo.name
    report.device_kind, report.chips, report.devices = topo.device_kind, topo.chips, len(topo.devices)
    report.mesh, report.hbm_bytes = dict(mesh.shape), topo.hbm_bytes
    return _compile(lowered, report, hlo_path)


def _compile(lowered, report: Report, hlo_path: str | None = None) -> Report:
    """Compile `lowered` and fill `report` with the compiler's memory, FLOPs and collectives,
    or with its refusal when the program does not fit (RESOURCE_EXHAUSTED)."""
    import jax

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.compile_seconds = time.perf_counter() - start
        _record_refusal(report, str(e))
        return report
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.argument_bytes = memory.argument_size_in_bytes
    report.output_bytes = memory.output_size_in_bytes
    report.alias_bytes = memory.alias_size_in_bytes
    report.temp_bytes = memory.temp_size_in_bytes
    report.code_bytes = memory.generated_code_size_in_bytes
    flops = cost_analysis_flops(compiled)
    report.compiled_flops = None if flops is None else flops * report.devices
    hlo = compiled.as_text()
    if hlo_path:
        pathlib.Path(hlo_path).write_text(hlo)
    report.collectives = count_collectives(hlo)
    report.pallas_calls = hlo.count('custom_call_target="tpu_custom_call"')
    if report.pallas_calls:
        report.notes.append(
            f"{report.pallas_calls} Pallas TPU kernel calls (tpu_custom_call) in the compiled HLO; "
            "FLOP counts see nothing inside them"
        )
    report.fits = report.total_bytes <= report.hbm_bytes
    return report


def _record_refusal(report: Report, message: str) -> None:
    """A program XLA:TPU refused as too big: its first message line, and what it said the program needs."""
    report.error = message.split("\n")[0]
    need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", report.error)
    if need:
        report.required_bytes = int(float(need.group(1)) * 2 ** (10 * "KMGT".index(need.group(2)) + 10))
    report.fits = False
