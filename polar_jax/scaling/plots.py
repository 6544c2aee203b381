"""The figures of a scaling study (matplotlib, Agg backend: no display needed), log-log axes.

    loss_vs_params.png   final held-out loss of each size (the mean over its seeds, bold; each
                         seed's run faint) against its parameters, the fit L = a N^b, and the
                         paper's exponent drawn through the means' centre
    loss_vs_compute.png  every size's mean held-out loss curve against compute (PF/s-days; each
                         seed's curve faint), the compute-optimal frontier and its fit, the fit
                         of the sizes' final points, and the paper's exponent through the
                         frontier's centre
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


def _minor_labels(axis, text) -> ticker.FuncFormatter:
    """Minor-tick labels `text(v)` on a log axis: every tick when the axis spans under a
    decade, else only those at 2, 3 and 5 x 10^k (more would overlap)."""

    def label(v, _):
        lo, hi = sorted(axis.get_view_interval())
        leading = round(v / 10 ** np.floor(np.log10(v)))
        return text(v) if hi < 10 * lo or leading in (2, 3, 5) else ""

    return ticker.FuncFormatter(label)


def _log_axes(ax, x_label: str, y_label: str, x_text=None) -> None:
    """Log-log axes whose tick labels stay readable over less than a decade of loss; `x_text`
    writes the x ticks (default: matplotlib's)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    # A loss spans about a decade: label the minor ticks too, in plain numbers.
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(_minor_labels(ax.yaxis, lambda v: f"{v:.3g}"))
    if x_text is not None:
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: x_text(v)))
        ax.xaxis.set_minor_formatter(_minor_labels(ax.xaxis, x_text))
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
    """A red footnote naming the failed and stale runs, which the plotted fits leave out."""
    bad = [f"{r['name']} ({r['status']}: {r['error'][:80]})" for r in rows if r["status"] in ("failed", "stale")]
    if bad:
        fig.text(0.01, 0.005, "not fitted: " + "; ".join(bad), fontsize=7, color="tab:red", va="bottom")


def _seeded(fit: dict) -> bool:
    """Whether some size has several finished runs (seeds): then each run is drawn faint."""
    return any(len(m["runs"]) > 1 for m in fit.get("sizes", []))


def plot_loss_vs_params(rows: list[dict], fit: dict, path: pathlib.Path) -> pathlib.Path:
    """Final held-out loss of each size (mean over seeds; the seeds faint) against parameters, with the fits."""
    done = [r for r in rows if r["status"] == "finished"]
    means = fit["sizes"]
    key = "params_non_embedding" if fit["params"] == "non_embedding" else "params"
    x_n = np.array([m["params"] for m in means], np.float64)
    y_n = np.array([m["eval_loss"] for m in means], np.float64)
    seeded = _seeded(fit)
    fig, ax = plt.subplots(figsize=(7, 5))
    if seeded:
        ax.scatter(
            [r[key] for r in done],
            [r["eval_loss"] for r in done],
            s=22,
            color="tab:blue",
            alpha=0.3,
            lw=0,
            zorder=2,
            label="each seed (final eval)",
        )
    ax.scatter(
        x_n,
        y_n,
        s=55,
        color="tab:blue",
        edgecolors="black",
        lw=0.8,
        zorder=3,
        label="mean over seeds" if seeded else "runs (final eval)",
    )
    for m, x, y in zip(means, x_n, y_n):
        ax.annotate(m["size"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    law = fit["loss_vs_params"]
    if "b" in law:
        ax.plot(
            *_line(law, x_n.min() / 1.5, x_n.max() * 1.5),
            "-",
            color="tab:blue",
            lw=1.5,
            label=f"fit: L = {law['a']:.3g} N^{law['b']:.4f}  (R² {law['r2']:.3f})",
        )
    if len(means) >= 2:
        b = fitting.PAPER["loss_vs_params"]["b"]
        _paper_slope(ax, b, x_n, y_n, f"paper exponent {b} (L = 0.9 N^{b}), through our centre")
    n_label = "non-embedding parameters N" if key == "params_non_embedding" else "parameters N"
    _log_axes(ax, n_label, "held-out loss L", x_text=short_count)
    ax.set_title("Reward-model loss against size")
    ax.legend(fontsize=8, loc="best")
    _failed_note(fig, rows)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path


def plot_loss_vs_compute(rows: list[dict], curves: dict, fit: dict, path: pathlib.Path) -> pathlib.Path:
    """Every size's mean held-out loss curve (the seeds' curves faint) against compute, the frontier and the fits."""
    done = [r for r in rows if r["status"] == "finished"]
    means = fit["sizes"]
    seeded = _seeded(fit)
    fig, ax = plt.subplots(figsize=(11, 5.2))
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(means), 1)))
    for m, colour in zip(means, colours):
        if seeded:
            for r in (r for r in done if r["name"] in m["runs"]):
                pts = curves.get(r["name"], [])
                ax.plot(
                    [p["compute_pfs_days"] for p in pts],
                    [p["eval_loss"] for p in pts],
                    "-",
                    color=colour,
                    lw=0.8,
                    alpha=0.3,
                )
        c_n = np.array([p["compute_pfs_days"] for p in m["curve"]])
        l_n = np.array([p["eval_loss"] for p in m["curve"]])
        label = f"{m['size']} (mean of {len(m['runs'])} seeds)" if seeded else f"{m['size']} (eval curve)"
        ax.plot(c_n, l_n, "o-", color=colour, ms=3.5, lw=1.6 if seeded else 1.2, alpha=0.95, label=label)
        ax.scatter([m["compute_pfs_days"]], [m["eval_loss"]], s=45, color=colour, zorder=3)
    fr = fit["frontier"]
    if fr["points"]:
        fc_n = np.array([p["compute_pfs_days"] for p in fr["points"]])
        fl_n = np.array([p["eval_loss"] for p in fr["points"]])
        ax.scatter(
            fc_n, fl_n, s=90, facecolors="none", edgecolors="black", lw=1.2, zorder=4, label="compute-optimal frontier"
        )
        if fr["loss_vs_compute"]:
            law = fr["loss_vs_compute"]
            ax.plot(
                *_line(law, fc_n.min() / 1.5, fc_n.max() * 1.5),
                "--",
                color="black",
                lw=1.4,
                label=f"frontier fit: L = {law['a']:.3g} C^{law['b']:.4f}  (R² {law['r2']:.3f})",
            )
            b = fitting.PAPER["loss_vs_compute"]["b"]
            _paper_slope(ax, b, fc_n, fl_n, f"paper exponent {b} (L = 2.4 C^{b}), through our frontier")
    law = fit["loss_vs_compute"]
    if "b" in law:
        x_n = np.array([m["compute_pfs_days"] for m in means])
        ax.plot(
            *_line(law, x_n.min() / 1.5, x_n.max() * 1.5),
            "-",
            color="tab:orange",
            lw=1.2,
            label=f"final points: L = {law['a']:.3g} C^{law['b']:.4f}  (R² {law['r2']:.3f})",
        )
    _log_axes(ax, "compute C (PF/s-days)", "held-out loss L")
    ax.set_title("Reward-model loss against training compute" + (" (faint: each seed)" if seeded else ""))
    ax.legend(
        fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
    )  # beside: curves fill the axes
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
    ax.plot(
        *_line(law, c_n.min() / 1.5, c_n.max() * 1.5),
        "-",
        color="tab:green",
        label=f"N_opt = {law['a']:.3g} C^{law['b']:.3f}  (R² {law['r2']:.3f})",
    )
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
