"""The driver: topology -> mesh -> lower one stage's step -> compile -> report."""

from __future__ import annotations

import pathlib
import re
import time

from polar_jax.aot import engine_stage, rft_phases, rft_stage, sample_stage, train_stage
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
    phases: bool = True,
) -> Report:
    """Lower and compile `stage`'s step of `config` for `topology`; the report says if it fits.

    "train": the trainer's update step over the config's batch. "sample": the KV-cache
    sampler (`sampling.generate`) of the config's model as a causal LM, `sample_batch`
    prompts (default data.batch_size) of `prompt_len` tokens plus `max_new_tokens`.
    "engine": one decode call of the continuous-batching engine, `sample_batch` slots with caches
    of `prompt_len` + `max_new_tokens`.
    "rft": the PPO update of an RFT config (`rft.step.ppo_update`: actor and critic states,
    one rollout batch), model shapes from the configs of policy.init / reward.model (no weights
    read), and with it every other program of one iteration (`rft_phases`: rollout prefill and
    decode at the config's lengths, scoring, experience): `report.phases` holds each one's
    per-device memory with what stays resident beside it, and the peak phase decides `fits`.
    `hlo_path`: write the compiled HLO text (of the update, for stage rft) there. `phases=False`:
    stage rft compiles the update alone (no `report.phases`; `fits` is the update's).
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
    report = _compile(lowered, report, hlo_path)
    if stage == "rft" and phases:
        del lowered  # the update's program, before the other phases compile
        _compile_phases(report, rft_phases.phases(config, mesh, *rft_models))
    return report


def compile_memory(lowered, target):
    """Compile `lowered` and set `target`'s (a `Report` or a `Phase`) per-device memory figures
    (argument, output, alias, temp and code bytes) and compile_seconds; the compiled program, or
    None when XLA:TPU refused it as too big (RESOURCE_EXHAUSTED: `target.error` and
    `target.required_bytes` then say what it said). Other compiler errors are raised."""
    import jax

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        target.compile_seconds = time.perf_counter() - start
        _record_refusal(target, str(e))
        return None
    target.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    target.argument_bytes = memory.argument_size_in_bytes
    target.output_bytes = memory.output_size_in_bytes
    target.alias_bytes = memory.alias_size_in_bytes
    target.temp_bytes = memory.temp_size_in_bytes
    target.code_bytes = memory.generated_code_size_in_bytes
    return compiled


def _compile(lowered, report: Report, hlo_path: str | None = None) -> Report:
    """Compile `lowered` and fill `report` with the compiler's memory, FLOPs and collectives,
    or with its refusal when the program does not fit (RESOURCE_EXHAUSTED)."""
    compiled = compile_memory(lowered, report)
    if compiled is None:
        report.fits = False
        return report
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


def _compile_phases(report: Report, lowerings) -> None:
    """Stage rft: compile each (`Phase`, lower) of `lowerings` in turn (one program in memory at a
    time), add the update itself (the figures `report` has) as the "update" phase, and decide
    `report.fits` by the peak: every phase compiled and the largest need within HBM."""
    from polar_jax.aot.report import Phase

    phases = []
    for phase, lower in lowerings:
        compile_memory(lower(), phase)
        phases.append(phase)
    update = Phase(
        name="update",
        program="rft.step.ppo_update",
        shapes=f"{report.tokens_per_step:,} tokens per step",
        resident=report.resident,
        resident_bytes=report.resident_bytes,
        input_bytes=report.state_bytes,
        compile_seconds=report.compile_seconds,
        error=report.error,
        required_bytes=report.required_bytes,
    )
    if report.argument_bytes is not None:
        for field in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes"):
            setattr(update, field, getattr(report, field))
    phases.append(update)
    report.phases = phases
    report.compile_seconds = sum(p.compile_seconds for p in phases)
    known = [p for p in phases if p.need_bytes is not None]
    peak = max(known, key=lambda p: p.need_bytes) if known else None
    refused = [p.name for p in phases if p.total_bytes is None]
    report.peak_phase = peak.name if peak else ""
    report.fits = not refused and peak is not None and peak.need_bytes <= report.hbm_bytes
    if refused:
        report.notes.append(f"the TPU compiler refused phase(s) {', '.join(refused)} as too big: it does not fit")
    if "scoring" not in [p.name for p in phases]:
        report.notes.append(
            "no scoring phase: reward.model is not a directory here (scoring through reward.server "
            "runs off these chips)"
        )


def _record_refusal(target, message: str) -> None:
    """A program XLA:TPU refused as too big: its first message line, and what it said the program
    needs, on `target` (a `Report` or a `Phase`)."""
    target.error = message.split("\n")[0]
    need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", target.error)
    if need:
        target.required_bytes = int(float(need.group(1)) * 2 ** (10 * "KMGT".index(need.group(2)) + 10))
