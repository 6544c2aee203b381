"""The figures of a scaling study (matplotlib, Agg backend: no display needed), log-log axes.

    loss_vs_params.png   final held-out loss of each finished run against its parameters, the
                         fit L = a N^b, and the paper's exponent drawn through the points' centre
    loss_vs_compute.png  every run's held-out loss curve against compute (PF/s-days), the
                         compute-optimal frontier and its fit, the fit of the runs' final points,
                         and the paper's exponent through the frontier's centre
    optimal_params.png   the size on the frontier against compute, N_opt = k C^c (when fitted)

The paper's prefactors belong to its models, data and tokenizer; only the exponents (the
slopes on these axes) are comparable, so its lines are anchored at our points.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from polar_jax.scaling import fit as fitting  # noqa: E402
from polar_jax.scaling.sizes import short_count  # noqa: E402

DPI = 130


def write_plots(workdir: str | pathlib.Path, rows: list[dict], curves: dict, fit: dict) -> list[pathlib.Path]:
    """Write the figures that the finished runs allow; returns their paths."""
    workdir = pathlib.Path(workdir)
    done = [r for r in rows if r["status"] == "finished"]
    written = []
    if done:
        written.append(plot_loss_vs_params(rows, fit, workdir / "loss_vs_params.png"))
        written.append(plot_loss_vs_compute(rows, curves, fit, workdir / "loss_vs_compute.png"))
    if fit["frontier"].get("optimal_params"):
        written.append(plot_optimal_params(fit, workdir / "optimal_params.png"))
    return written


def _log_axes(ax, x_label: str, y_label: str) -> None:
    """Log-log axes whose tick labels stay readable over less than a decade of loss."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    # A loss spans well under a decade: label the minor ticks in plain numbers.
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)


def _line(law: dict, lo: float, hi: float, n: int = 50):
    """Points of y = a x^b between lo and hi, geometrically spaced: (x_n, y_n)."""
    x_n = np.geomspace(lo, hi, n)
    return x_n, law["a"] * x_n ** law["b"]


def _paper_slope(ax, b: float, x_n: np.ndarray, y_n: np.ndarray, label: str) -> None:
    """A line of slope b through the geometric centre of (x_n, y_n), across their x range."""
    cx, cy = np.exp(np.mean(np.log(x_n))), np.exp(np.mean(np.log(y_n)))
    lo, hi = x_n.min() / 1.5, x_n.max() * 1.5
    xs_n = np.geomspace(lo, hi, 50)
    ax.plot(xs_n, cy * (xs_n / cx) ** b, ":", color="tab:red", lw=1.6, label=label)


def _failed_note(fig, rows: list[dict]) -> None:
    bad = [f"{r['name']} ({r['status']}: {r['error'][:80]})" for r in rows if r["status"] in ("failed", "stale")]
    if bad:
        fig.text(0.01, 0.005, "not fitted: " + "; ".join(bad), fontsize=7, color="tab:red", va="bottom")


def plot_loss_vs_params(rows: list[dict], fit: dict, path: pathlib.Path) -> pathlib.Path:
    """Final held-out loss of each finished run against parameters, with the fits."""
    done = [r for r in rows if r["status"] == "finished"]
    key = "params_non_embedding" if fit["params"] == "non_embedding" else "params"
    x_n = np.array([r[key] for r in done], np.float64)
    y_n = np.array([r["eval_loss"] for r in done], np.float64)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(x_n, y_n, s=45, color="tab:blue", zorder=3, label="runs (final eval)")
    for r, x, y in zip(done, x_n, y_n):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    law = fit["loss_vs_params"]
    if "b" in law:
        ax.plot(*_line(law, x_n.min() / 1.5, x_n.max() * 1.5), "-", color="tab:blue", lw=1.5,
                label=f"fit: L = {law['a']:.3g} N^{law['b']:.4f}  (R² {law['r2']:.3f})")
    if len(done) >= 2:
        b = fitting.PAPER["loss_vs_params"]["b"]
        _paper_slope(ax, b, x_n, y_n, f"paper exponent {b} (L = 0.9 N^{b}), through our centre")
    n_label = "non-embedding parameters N" if key == "params_non_embedding" else "parameters N"
    _log_axes(ax, n_label, "held-out loss L")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: short_count(v)))
    ax.set_title("Reward-model loss against size")
    ax.legend(fontsize=8, loc="best")
    _failed_note(fig, rows)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path


def plot_loss_vs_compute(rows: list[dict], curves: dict, fit: dict, path: pathlib.Path) -> pathlib.Path:
    """Every run's held-out loss curve against compute, the frontier and the fits."""
    done = [r for r in rows if r["status"] == "finished"]
    fig, ax = plt.subplots(figsize=(11, 5.2))
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(done), 1)))
    for r, colour in zip(done, colours):
        pts = curves.get(r["name"], [])
        c_n = np.array([p["compute_pfs_days"] for p in pts])
        l_n = np.array([p["eval_loss"] for p in pts])
        ax.plot(c_n, l_n, "o-", color=colour, ms=3.5, lw=1.2, alpha=0.9, label=f"{r['name']} (eval curve)")
        ax.scatter([r["compute_pfs_days"]], [r["eval_loss"]], s=45, color=colour, zorder=3)
    fr = fit["frontier"]
    if fr["points"]:
        fc_n = np.array([p["compute_pfs_days"] for p in fr["points"]])
        fl_n = np.array([p["eval_loss"] for p in fr["points"]])
        ax.scatter(fc_n, fl_n, s=90, facecolors="none", edgecolors="black", lw=1.2, zorder=4,
                   label="compute-optimal frontier")
        if fr["loss_vs_compute"]:
            law = fr["loss_vs_compute"]
            ax.plot(*_line(law, fc_n.min() / 1.5, fc_n.max() * 1.5), "--", color="black", lw=1.4,
                    label=f"frontier fit: L = {law['a']:.3g} C^{law['b']:.4f}  (R² {law['r2']:.3f})")
            b = fitting.PAPER["loss_vs_compute"]["b"]
            _paper_slope(ax, b, fc_n, fl_n, f"paper exponent {b} (L = 2.4 C^{b}), through our frontier")
    law = fit["loss_vs_compute"]
    if "b" in law:
        x_n = np.array([r["compute_pfs_days"] for r in done])
        ax.plot(*_line(law, x_n.min() / 1.5, x_n.max() * 1.5), "-", color="tab:orange", lw=1.2,
                label=f"final points: L = {law['a']:.3g} C^{law['b']:.4f}  (R² {law['r2']:.3f})")
    _log_axes(ax, "compute C (PF/s-days)", "held-out loss L")
    ax.set_title("Reward-model loss against training compute")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside: curves fill the axes
    _failed_note(fig, rows)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path


def plot_optimal_params(fit: dict, path: pathlib.Path) -> pathlib.Path:
    """The size on the compute-optimal frontier against compute, with N_opt = k C^c."""
    fr = fit["frontier"]
    c_n = np.array([p["compute_pfs_days"] for p in fr["points"]])
    n_n = np.array([p["params"] for p in fr["points"]])
    law = fr["optimal_params"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(c_n, n_n, s=45, color="tab:green", zorder=3, label="frontier points")
    ax.plot(*_line(law, c_n.min() / 1.5, c_n.max() * 1.5), "-", color="tab:green",
            label=f"N_opt = {law['a']:.3g} C^{law['b']:.3f}  (R² {law['r2']:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: short_count(v)))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("compute C (PF/s-days)")
    ax.set_ylabel("parameters of the frontier's model")
    ax.set_title("Compute-optimal model size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path
