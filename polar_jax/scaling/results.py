"""Collecting a sweep's results and fitting them: one scaling.csv row per run and its evaluation
curve with compute (`collect`), the per-size means over seeds (`size_means`, `mean_curve`) and
the contents of fit.json (`analyse`). Compute and the fits are described in `polar_jax.scaling.sweep`.
"""

from __future__ import annotations

import json

import numpy as np

from polar_jax.flops import train_flops_per_token
from polar_jax.models.config import ModelConfig
from polar_jax.scaling import fit as fitting
from polar_jax.scaling.planning import SIZE_FIELDS, RunPlan, counted_params
from polar_jax.scaling.run_state import is_finished, read_metrics, read_status, stale_message
from polar_jax.train.setup import attention_window

PFS_DAY = 1e15 * 86400  # FLOPs in one PF/s-day
CSV_FIELDS = (
    "name",
    "size",
    "seed",
    "status",
    "error",
    "init",
    "num_layers",
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "vocab_size",
    "params",
    "params_non_embedding",
    "steps",
    "batch_size",
    "seq_len",
    "lr",
    "tokens_per_step",
    "tokens",
    "flops_per_token",
    "compute_flops",
    "compute_pfs_days",
    "eval_loss",
    "eval_accuracy",
    "train_loss",
    "wall_s",
)


def collect(plans: list[RunPlan], fit_params: str = "non_embedding") -> tuple[list[dict], dict[str, list[dict]]]:
    """(one row per run for scaling.csv, {name: its evaluations with compute}) from the runs'
    metrics files and sweep_status.json."""
    rows, curves = [], {}
    for run in plans:
        saved = read_status(run) if run.workdir.exists() else {}
        status, error = _status_and_error(run, saved)
        model_cfg = _finished_model_config(run) or run.model_cfg
        metrics = read_metrics(run.workdir)
        train_rows = [r for r in metrics if "tokens" in r]
        evals = [r for r in metrics if "eval_loss" in r]
        c = run.config
        tokens_per_step = (
            float(np.mean([r["tokens"] for r in train_rows]))
            if train_rows
            else c.data.batch_size * c.data.seq_len * 1.0
        )
        # The attention the runs computed: windowed where their data promised a longest segment.
        window = attention_window(c) if "shared_prefix" in c.data else 0
        fpt = train_flops_per_token(model_cfg, c.data.seq_len, window=window) if model_cfg is not None else float("nan")
        row = dict.fromkeys(CSV_FIELDS, "")
        row.update(
            name=run.name,
            size=run.size,
            seed=run.seed,
            status=status,
            error=error,
            init=c.model.init,
            steps=run.steps,
            batch_size=c.data.batch_size,
            seq_len=c.data.seq_len,
            lr=c.optim.lr,
            wall_s=saved.get("wall_s", ""),
        )
        if model_cfg is not None:
            row.update({k: getattr(model_cfg, k) for k in SIZE_FIELDS})
            row.update(
                params=model_cfg.num_params(),
                params_non_embedding=model_cfg.num_params(include_embedding=False),
                flops_per_token=fpt,
            )
        if status == "finished":
            final = next(r for r in reversed(evals) if r["step"] == run.steps)
            tokens = tokens_per_step * run.steps
            row.update(
                tokens_per_step=tokens_per_step,
                tokens=tokens,
                compute_flops=fpt * tokens,
                compute_pfs_days=fpt * tokens / PFS_DAY,
                eval_loss=final["eval_loss"],
                eval_accuracy=final.get("eval_accuracy", ""),
                train_loss=train_rows[-1].get("loss", "") if train_rows else "",
            )
            n = counted_params(model_cfg, fit_params) if model_cfg is not None else float("nan")
            curves[run.name] = _eval_curve(evals, fpt * tokens_per_step, n)
        rows.append(row)
    return rows, curves


def _status_and_error(run: RunPlan, saved: dict) -> tuple[str, str]:
    """The run's status for scaling.csv (stale, finished, failed or pending) and its error ("" when none);
    `saved` is its sweep_status.json."""
    stale = stale_message(run)
    if stale:
        status = "stale"
    elif is_finished(run):
        status = "finished"
    else:
        status = "failed" if saved.get("status") == "failed" else "pending"
    error = stale or (saved.get("error", "") if status == "failed" else "")
    return status, error


def _eval_curve(evals: list[dict], flops_per_step: float, params: float) -> list[dict]:
    """A finished run's evaluations by step with the compute spent up to each (`flops_per_step` FLOPs a step)."""
    by_step = {}
    for r in evals:  # a resumed run may repeat a step: the last one counts
        by_step[r["step"]] = r
    return [
        {
            "step": s,
            "eval_loss": r["eval_loss"],
            "eval_accuracy": r.get("eval_accuracy"),
            "compute_flops": flops_per_step * s,
            "compute_pfs_days": flops_per_step * s / PFS_DAY,
            "params": params,
        }
        for s, r in sorted(by_step.items())
    ]


def _finished_model_config(run: RunPlan) -> ModelConfig | None:
    """The shape the trainer saved with the run's model (None before it has finished)."""
    meta = run.workdir / "model" / "polar_model.json"
    if meta.exists():
        return ModelConfig.from_dict(json.loads(meta.read_text())["model_config"])
    return None


def size_means(rows: list[dict], curves: dict[str, list[dict]], fit_params: str = "non_embedding") -> list[dict]:
    """One entry per size with a finished run, in the rows' order: its finished runs and seeds,
    their final losses, and the means the fits use (loss, accuracy, compute; the loss's sample
    standard deviation over seeds, None with one seed) with the mean evaluation curve."""
    param_key = "params_non_embedding" if fit_params == "non_embedding" else "params"
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "finished" and r["eval_loss"] != "":
            groups.setdefault(r.get("size") or r["name"], []).append(r)
    out = []
    for size, runs in groups.items():
        loss_n = np.array([r["eval_loss"] for r in runs], np.float64)
        accuracies = [r["eval_accuracy"] for r in runs if r["eval_accuracy"] != ""]
        out.append(
            {
                "size": size,
                "params": runs[0][param_key],
                "runs": [r["name"] for r in runs],
                "seeds": [r.get("seed", 0) for r in runs],
                "eval_losses": loss_n.tolist(),
                "eval_loss": float(loss_n.mean()),
                "eval_loss_std": float(loss_n.std(ddof=1)) if len(runs) > 1 else None,
                "eval_accuracy": float(np.mean(accuracies)) if accuracies else None,
                "compute_pfs_days": float(np.mean([r["compute_pfs_days"] for r in runs])),
                "curve": mean_curve([curves.get(r["name"], []) for r in runs]),
            }
        )
    return out


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The mean of several runs' evaluation curves at the steps all of them evaluated."""
    if not curves:
        return []
    steps = sorted(set.intersection(*({p["step"] for p in c} for c in curves)))
    by_step = [{p["step"]: p for p in c} for c in curves]
    out = []
    for step in steps:
        points = [c[step] for c in by_step]
        mean = {"step": step}
        for key in ("eval_loss", "eval_accuracy", "compute_flops", "compute_pfs_days", "params"):
            values = [p[key] for p in points if p.get(key) is not None]
            mean[key] = float(np.mean(values)) if values else None
        out.append(mean)
    return out


def analyse(rows: list[dict], curves: dict[str, list[dict]], fit_params: str = "non_embedding") -> dict:
    """The contents of fit.json: L = a N^b and L = a C^b over the sizes' mean final losses
    (`size_means`), the compute-optimal frontier over the sizes' mean evaluation curves, and
    the paper's fits."""
    means = size_means(rows, curves, fit_params)
    out = {
        "params": fit_params,
        "compute_unit": "PF/s-days (1e15 FLOP/s for one day)",
        "loss": "final held-out eval_loss (Bradley-Terry), the mean over each size's finished seeds",
        "fit_space": "least squares in log-log space, one point per size",
        "runs": {
            "total": len(rows),
            "finished": [r["name"] for r in rows if r["status"] == "finished"],
            "failed": [{"name": r["name"], "error": r["error"]} for r in rows if r["status"] == "failed"],
            "stale": [{"name": r["name"], "error": r["error"]} for r in rows if r["status"] == "stale"],
            "pending": [r["name"] for r in rows if r["status"] == "pending"],
        },
        "sizes": means,
        "paper": fitting.PAPER,
    }
    y_n = np.array([m["eval_loss"] for m in means], np.float64)
    for key, x_key in (("loss_vs_params", "params"), ("loss_vs_compute", "compute_pfs_days")):
        out[key] = _try_fit(np.array([m[x_key] for m in means], np.float64), y_n)
    out["frontier"] = _frontier(means)
    return out


def _frontier(means: list[dict]) -> dict:
    """fit.json's "frontier": the points of the sizes' mean evaluation curves that no cheaper point beats
    (`fit.pareto_frontier`) and the power laws through them (loss and optimal size vs compute), with a note
    saying why when a fit is missing."""
    points = [(m["size"], p) for m in means for p in m["curve"]]
    frontier_fit = {"points": [], "loss_vs_compute": None, "optimal_params": None, "note": ""}
    if not points:
        frontier_fit["note"] = "no finished run"
        return frontier_fit
    c_n = np.array([p["compute_pfs_days"] for _, p in points])
    l_n = np.array([p["eval_loss"] for _, p in points])
    n_n = np.array([p["params"] for _, p in points])
    try:
        frontier = fitting.compute_frontier(c_n, l_n, n_n)
    except ValueError as e:
        frontier_fit["note"] = str(e)
        return frontier_fit
    return {
        "points": [
            {
                "size": points[i][0],
                "step": points[i][1]["step"],
                "compute_pfs_days": float(c_n[i]),
                "eval_loss": float(l_n[i]),
                "params": float(n_n[i]),
            }
            for i in frontier["indices"]
        ],
        "loss_vs_compute": _as_dict(frontier["loss_vs_compute"]),
        "optimal_params": _as_dict(frontier["optimal_params"]),
        "note": frontier["note"],
    }


def _as_dict(law):
    """A fitted power law as a dict (None stays None)."""
    return law.to_dict() if law is not None else None


def _try_fit(x_n, y_n) -> dict:
    """A power law fitted to the points as a dict with an empty note, or only the note saying why not."""
    try:
        return fitting.fit_power_law(x_n, y_n).to_dict() | {"note": ""}
    except ValueError as e:
        return {"note": f"no fit: {e}"}
