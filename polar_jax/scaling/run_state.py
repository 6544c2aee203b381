"""What a sweep run's workdir says about it: its metrics, whether it finished, whether it holds
a run of another config (stale), and its sweep_status.json.

    DIR/runs/NAME/metrics.jsonl      the trainer's log: finished = an `eval_loss` at the final step
    DIR/runs/NAME/run_config.json    the run's full training config, as planned
    DIR/runs/NAME/sweep_status.json  {"status", "error", "wall_s"} as the sweep last saw it
"""

from __future__ import annotations

import json
import pathlib

from polar_jax.config_checks import config_difference
from polar_jax.scaling.planning import RunPlan


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    """The rows of `workdir/metrics.jsonl` ([] when absent; a torn last line is skipped)."""
    path = workdir / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def is_finished(run: RunPlan) -> bool:
    """Whether the run's metrics hold an evaluation at its final step."""
    return any(r.get("step") == run.steps and "eval_loss" in r for r in read_metrics(run.workdir))


def _started(workdir: pathlib.Path) -> bool:
    """Whether training wrote anything (metrics or checkpoints) in the workdir."""
    return (workdir / "metrics.jsonl").exists() or (workdir / "checkpoints").exists()


def stale_message(run: RunPlan) -> str:
    """Why the run's workdir holds results of another config ("" when it does not)."""
    path = run.workdir / "run_config.json"
    if not (path.exists() and _started(run.workdir)):
        return ""
    diff = config_difference(json.loads(path.read_text()), json.loads(run.config.to_json()))
    if not diff:
        return ""
    return (
        f"{run.workdir} holds a run of a different config ({diff}); delete that directory to rerun it, "
        "or use another --workdir"
    )


def prepare_workdir(run: RunPlan) -> str:
    """Write the run's run_config.json; return the stale-run message instead when there is one."""
    stale = stale_message(run)
    if stale:
        return stale
    run.workdir.mkdir(parents=True, exist_ok=True)
    (run.workdir / "run_config.json").write_text(run.config.to_json(indent=2) + "\n")
    return ""


def read_status(run: RunPlan) -> dict:
    """sweep_status.json of the run ({} when absent)."""
    path = run.workdir / "sweep_status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_status(run: RunPlan, **fields) -> None:
    """Update sweep_status.json of the run."""
    status = read_status(run) | fields
    (run.workdir / "sweep_status.json").write_text(json.dumps(status, indent=2) + "\n")
