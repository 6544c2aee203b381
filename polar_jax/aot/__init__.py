"""Ahead-of-time compilation for TPU topologies, on a machine without TPUs.

With `libtpu` installed (`launch/setup.sh --tpu`), XLA compiles for a TPU slice described
only by its name ("v5p:4x4x4", "v5p-128", "v5litepod-256", "v6e:16x16"): the devices are
compile-only, nothing runs and no weights or data are read. The step compiled is the one
training runs (`train.setup.jit_train_step`, with the TPU attention kernel that "auto" picks on
TPU), over `jax.ShapeDtypeStruct`s carrying the config's shardings on a mesh built from the
topology's devices. The report gives per-chip memory against the chip's usable HBM (a program
that cannot fit is refused by XLA:TPU itself, with what it needs), FLOPs per step (the
model count 6 N + 6 L T d per token of `flops.py`, the traced step's matmuls, XLA's cost analysis of the compiled program) and the
collectives in the compiled HLO. Stage "rft" compiles the RFT loop's PPO update
(`rft.step.ppo_update`) of an RFT config and the iteration's other programs (`rft_phases`:
rollout prefill and decode through the engine, scoring, experience), each with what stays
resident beside it (`report.phases`; the peak decides the fit), with model shapes read from the
configs of its model files (`io.models.read_model_config`), not their weights.

    report = compile_step(load_config("configs/polar_7b.py"), "v5p:4x4x4")
    print(report.format()); report.fits

Call `prepare_environment()` before JAX initialises a backend (the `compile` command does):
it keeps the local platform on CPU and lets libtpu load next to other processes (it only
compiles, so it claims no chip and needs no lock). Importing this package imports no JAX.

`topology` (HBM tables, topology names, compile-only devices, the environment), `compile`
(`compile_step`: topology -> mesh -> lower one stage -> compile -> report), one module per
stage (`train_stage`, `sample_stage`, `engine_stage`, `rft_stage`, each with `lower(config, mesh, ...)`;
`rft_phases` the rest of an RFT iteration),
`abstract` (abstract parameters, the tracing context), `counting` (collectives, bytes,
FLOPs) and `report` (`Report` and its text).
"""

from polar_jax.aot.abstract import abstract_params, tracing_context
from polar_jax.aot.compile import STAGES, StageUnavailable, compile_step
from polar_jax.aot.counting import COLLECTIVES, count_collectives, ppo_row_flops, shard_bytes, traced_matmul_flops
from polar_jax.aot.report import Phase, Report
from polar_jax.aot.rft_stage import rft_model_configs
from polar_jax.aot.topology import (
    DEVICE_KINDS,
    GIB,
    HBM_GIB,
    LibtpuMissing,
    Topology,
    canonical_topology,
    get_topology,
    libtpu_available,
    prepare_environment,
)

__all__ = [
    "COLLECTIVES",
    "DEVICE_KINDS",
    "GIB",
    "HBM_GIB",
    "STAGES",
    "LibtpuMissing",
    "Phase",
    "Report",
    "StageUnavailable",
    "Topology",
    "abstract_params",
    "canonical_topology",
    "compile_step",
    "count_collectives",
    "get_topology",
    "libtpu_available",
    "ppo_row_flops",
    "prepare_environment",
    "rft_model_configs",
    "shard_bytes",
    "tracing_context",
    "traced_matmul_flops",
]
