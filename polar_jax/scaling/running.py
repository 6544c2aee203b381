"""Running a sweep's runs: train them one after another in this process (`run_local`), or write
one pod-slice launch command per unfinished run (`pod_commands`, `launch_script`).

Finished runs are not rerun, stale ones are skipped, and a run that raises is recorded as
failed in its sweep_status.json while the sweep goes on (see `polar_jax.scaling.sweep`).
"""

from __future__ import annotations

import logging
import shlex
import time
import traceback
from collections.abc import Callable

from polar_jax import run_manifest
from polar_jax.scaling.planning import RunPlan
from polar_jax.scaling.run_state import is_finished, prepare_workdir, read_status, write_status

log = logging.getLogger("polar_jax.scaling.sweep")  # the sweep's log lines keep the name they had before the split


def run_local(plans: list[RunPlan], train_fn: Callable | None = None, progress: bool = True) -> dict[str, str]:
    """Train every unfinished run in this process, smallest first; returns {name: status}.

    `train_fn(config, workdir, progress)` defaults to the trainer; a run that raises is
    recorded as failed and the sweep goes on. A run dir left without run.json gets one.
    """
    if train_fn is None:
        from polar_jax.train import trainer

        train_fn = trainer.train
    out = {}
    for i, run in enumerate(plans, 1):
        tag = f"[{i}/{len(plans)}] {run.name}"
        stale = prepare_workdir(run)
        if stale:
            log.error("%s: stale: %s", tag, stale)
            out[run.name] = "stale"
            continue
        if is_finished(run):
            log.info("%s: finished earlier, not rerun", tag)
            out[run.name] = "finished"
            continue
        out[run.name] = _train_run(run, train_fn, progress, tag)
        if out[run.name] == "pending":  # interrupted by a signal: the rest of the sweep waits for a rerun
            break
    return out


def _train_run(run: RunPlan, train_fn: Callable, progress: bool, tag: str) -> str:
    """Train one unfinished run and record the outcome in its sweep_status.json; returns its status:
    "finished", "failed" (it raised, or ended without its final evaluation) or "pending" (a signal stopped it)."""
    log.info(
        "%s: training %d steps (%s, lr %.3g, batch %d x %d tokens) in %s",
        tag,
        run.steps,
        _describe_model(run),
        run.config.optim.lr,
        run.config.data.batch_size,
        run.config.data.seq_len,
        run.workdir,
    )
    start = time.perf_counter()
    try:
        result = train_fn(run.config, run.workdir, progress)
        if not (run.workdir / run_manifest.FILENAME).exists():  # the trainer writes it at its start
            run_manifest.write(run.workdir, run.config, run_manifest.train_inputs(run.config))
        if getattr(result, "stopped_by", "done") == "signal":
            wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
            write_status(run, status="pending", error="", wall_s=wall)
            log.warning("%s: interrupted; rerun the same command to resume the sweep", tag)
            return "pending"
        if not is_finished(run):
            raise RuntimeError(
                f"training returned without an evaluation at step {run.steps} in {run.workdir / 'metrics.jsonl'}"
            )
    except Exception as e:  # noqa: BLE001 - any failure of one run is reported, and the sweep goes on
        wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
        message = f"{type(e).__name__}: {e}"
        log.error("%s: failed after %.0f s: %s", tag, time.perf_counter() - start, message)
        log.debug("%s", traceback.format_exc())
        write_status(run, status="failed", error=message, wall_s=wall)
        return "failed"
    wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
    write_status(run, status="finished", error="", wall_s=wall)
    log.info("%s: finished in %.0f s", tag, time.perf_counter() - start)
    return "finished"


def _describe_model(run: RunPlan) -> str:
    """The run's model for the log: its shape and non-embedding parameters, or the base model it starts from."""
    if run.model_cfg is None:
        return f"from {run.config.model.init}"
    m = run.model_cfg
    return f"{m.num_layers} layers x {m.d_model}, {m.num_params(include_embedding=False):,} non-embedding params" + (
        "" if run.config.model.init == "scratch" else f", from {run.config.model.init}"
    )


def pod_commands(plans: list[RunPlan], tpu: str, zone: str, script: str = "launch/tpu_pod.sh") -> list[str]:
    """One launch command per unfinished run (launch/tpu_pod.sh), each reading its run_config.json
    through configs/scaling/from_json.py. DIR must be on storage every worker sees."""
    commands = []
    for run in plans:
        if prepare_workdir(run) or is_finished(run):
            continue
        config = f"configs/scaling/from_json.py:{run.workdir / 'run_config.json'}"
        commands.append(" ".join(shlex.quote(str(a)) for a in (script, tpu, zone, config, run.workdir)))
    return commands


def launch_script(commands: list[str]) -> str:
    """A bash script running the pod commands one after another (a failed run does not stop the rest)."""
    body = "".join(f"{c} || echo 'run failed: {c.split()[-1]}' >&2\n" for c in commands)
    return (
        "#!/usr/bin/env bash\n# Written by `python -m polar_jax scaling --launch pod`: one run per line, on one "
        "slice.\n# Split the lines over several slices to run them at once; rerun the scaling command "
        "afterwards.\n" + body
    )
