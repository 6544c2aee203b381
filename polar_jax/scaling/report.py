"""Writing a sweep's results: scaling.csv (one row per run), fit.json (the fits with every
evaluation point), the PNG plots, and the text summary printed on the terminal.
"""

from __future__ import annotations

import csv
import json
import pathlib

from polar_jax.scaling import fit as fitting
from polar_jax.scaling.results import CSV_FIELDS


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    """scaling.csv: one row per run, columns CSV_FIELDS."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def write_results(workdir: str | pathlib.Path, rows: list[dict], curves: dict, fit: dict) -> list[pathlib.Path]:
    """scaling.csv, fit.json (with every evaluation point) and the PNG plots; returns the paths."""
    from polar_jax.scaling import plots

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, workdir / "scaling.csv")
    (workdir / "fit.json").write_text(json.dumps(fit | {"evaluations": curves}, indent=2) + "\n")
    return [workdir / "scaling.csv", workdir / "fit.json", *plots.write_plots(workdir, rows, curves, fit)]


def summary(rows: list[dict], fit: dict) -> str:
    """A text table of the runs and the fits, for the terminal."""
    lines = [f"{'run':>8} {'status':>9} {'params':>11} {'PF/s-days':>10} {'eval_loss':>9} {'acc':>6} {'wall_s':>7}"]
    for r in rows:
        lines.append(
            f"{r['name']:>8} {r['status']:>9} {_fmt(r['params_non_embedding'], ',d'):>11} "
            f"{_fmt(r['compute_pfs_days'], '.3g'):>10} {_fmt(r['eval_loss'], '.4f'):>9} "
            f"{_fmt(r['eval_accuracy'], '.3f'):>6} {_fmt(r['wall_s'], '.0f'):>7}"
        )
        if r["error"]:
            lines.append(f"{'':>8} {r['error']}")
    sizes_ = fit.get("sizes", [])
    if any(len(m["runs"]) > 1 for m in sizes_):
        lines.append(
            f"{'size':>8} {'seeds':>5} {'params':>11} {'PF/s-days':>10} {'mean loss':>9} {'std':>6}  loss per seed"
        )
        for m in sizes_:
            per_seed = ", ".join(f"s{seed} {loss:.4f}" for seed, loss in zip(m["seeds"], m["eval_losses"]))
            lines.append(
                f"{m['size']:>8} {len(m['runs']):>5} {_fmt(m['params'], ',d'):>11} "
                f"{m['compute_pfs_days']:>10.3g} {m['eval_loss']:>9.4f} "
                f"{_fmt(m['eval_loss_std'] if m['eval_loss_std'] is not None else '', '.4f'):>6}  {per_seed}"
            )
    paper = fitting.PAPER
    for key, x, unit in (("loss_vs_params", "N", "params"), ("loss_vs_compute", "C", "final points")):
        f = fit[key]
        text = f"L = {f['a']:.3g} {x}^{f['b']:.4f} (R^2 {f['r2']:.3f}, {f['n']} sizes)" if "b" in f else f["note"]
        lines.append(f"{key} ({unit}): {text}; paper b = {paper[key]['b']}")
    fr = fit["frontier"]["loss_vs_compute"]
    if fr:
        lines.append(f"frontier: L = {fr['a']:.3g} C^{fr['b']:.4f} (R^2 {fr['r2']:.3f}, {fr['n']} points)")
    opt = fit["frontier"]["optimal_params"]
    if opt:
        lines.append(f"compute-optimal size: N_opt = {opt['a']:.3g} C^{opt['b']:.3f}")
    if fit["frontier"]["note"]:
        lines.append(f"frontier: {fit['frontier']['note']}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    """A table cell: the value in `spec`, or "-" for an empty field."""
    return "-" if value == "" else format(value, spec)
