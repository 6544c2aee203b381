"""A scaling sweep: plan the runs of a sweep config, train them (or print pod-slice launch
commands), collect what their metrics files say, fit, and write the results.

A sweep config (`configs/scaling/*.py`) holds a training config `train` that every run
starts from, and what varies: `layers` (sizes of the family `family`, a depth/width rule of
`sizes.py`) or `base_models` (runs that start from base LMs), the token budget `budget`, and
the LR and batch rules (`lr`, `batch`: "fixed" or the paper's fits), the training seeds
`seeds` (one run per size and seed) and the validation split `eval_split`. See
configs/scaling/base.py for every field.

Run names: the size's name ("27K", its non-embedding parameter count) when `seeds` is (0,),
the default; NAME-sSEED ("27K-s1") otherwise. Each run's `train.seed` (initialisation and data
order) is its seed.

On disk, for `--workdir DIR`:
    DIR/runs/NAME/            the run's workdir (checkpoints, metrics.jsonl, model/)
    DIR/runs/NAME/run_config.json    the run's full training config, as planned
    DIR/runs/NAME/sweep_status.json  {"status", "error", "wall_s"} as the sweep last saw it
    DIR/scaling.csv, DIR/fit.json, DIR/*.png

A run is *finished* when its metrics.jsonl holds a held-out evaluation (`eval_loss`) at the
run's final step: the trainer writes one there whenever `eval_every` > 0, which the sweep
always sets. Finished runs are not rerun. A run that raised is *failed*: its error is kept in
sweep_status.json, scaling.csv and fit.json, the sweep goes on, the fits use the other runs,
and the next invocation retries it (resuming from its last checkpoint). A run whose workdir
holds results of a different config is *stale*: it is neither rerun nor fitted, and the
message says to delete it or pick another workdir.

Compute: C = model FLOPs per token (`flops.train_flops_per_token`: 6 N + 6 L T d, with T the
row length `data.seq_len`) x tokens seen, where tokens seen at step s = s x the mean
non-padding tokens per step of the logged steps. PF/s-days = C / (1e15 x 86400). The
validation loss is the final `eval_loss` (Bradley-Terry loss on the held-out split).

Fits use one point per size: the mean over its finished seeds of the final loss (and of the
compute, which differs a little between seeds with the packing). The compute-optimal frontier
uses each size's mean evaluation curve (the steps every finished seed evaluated). scaling.csv
keeps every run; fit.json has the per-size means, the seeds' losses and their spread.

The steps live in their own modules, and every public name is importable from here:
`planning` (the plan: RunPlan, plan, describe_plans), `run_state` (what a run's workdir says),
`running` (run_local, pod_commands, launch_script), `results` (collect, size_means, analyse)
and `report` (write_results, summary).
"""

from __future__ import annotations

from polar_jax.models.config import ModelConfig
from polar_jax.scaling import fit as fitting
from polar_jax.scaling import sizes
from polar_jax.scaling.planning import (
    SIZE_FIELDS,
    RunPlan,
    SweepError,
    base_model_config,
    check_data,
    counted_params,
    data_vocab_size,
    describe_plans,
    plan,
    resolve_data,
    run_name,
    sweep_seeds,
)
from polar_jax.scaling.report import summary, write_csv, write_results
from polar_jax.scaling.results import CSV_FIELDS, PFS_DAY, analyse, collect, mean_curve, size_means
from polar_jax.scaling.run_state import (
    config_difference,
    is_finished,
    prepare_workdir,
    read_metrics,
    read_status,
    stale_message,
    write_status,
)
from polar_jax.scaling.running import launch_script, pod_commands, run_local

__all__ = [
    "CSV_FIELDS",
    "PFS_DAY",
    "SIZE_FIELDS",
    "ModelConfig",
    "RunPlan",
    "SweepError",
    "analyse",
    "base_model_config",
    "check_data",
    "collect",
    "config_difference",
    "counted_params",
    "data_vocab_size",
    "describe_plans",
    "fitting",
    "is_finished",
    "launch_script",
    "mean_curve",
    "plan",
    "pod_commands",
    "prepare_workdir",
    "read_metrics",
    "read_status",
    "resolve_data",
    "run_local",
    "run_name",
    "size_means",
    "sizes",
    "stale_message",
    "summary",
    "sweep_seeds",
    "write_csv",
    "write_results",
    "write_status",
]
