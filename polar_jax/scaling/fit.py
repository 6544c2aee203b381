"""Power-law fits and the compute-optimal frontier.

`fit_power_law` fits y = a x^b by least squares on (log x, log y), the usual way scaling laws
are fitted (and the paper's L = 0.9 N^-0.0425, L = 2.4 C^-0.0342 read as such lines). R^2 is
that of the log-log regression; `b_stderr` is the standard error of the exponent (needs 3+
points). With y = a x^b exp(eps), eps ~ N(0, sigma), the fitted b is unbiased with standard
error sigma / sqrt(sum (log x - mean log x)^2).

The compute-optimal frontier (Kaplan et al. 2020): every held-out evaluation of every run is a
point (compute spent so far, loss); the frontier is the lower envelope, the points no cheaper
point beats. L = a C^b is fitted on it, and so is N_opt = k C^c (the size that reaches the
frontier at each compute) when the frontier holds two or more sizes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The paper's fits (Dou et al., arXiv 2507.05197): N in parameters, C in PF/s-days.
PAPER = {
    "loss_vs_params": {"a": 0.9, "b": -0.0425, "r2": 0.9886},
    "loss_vs_compute": {"a": 2.4, "b": -0.0342, "r2": 0.9912},
}


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = a x^b fitted on n points with x in [x_min, x_max]; r2 of the log-log regression."""

    a: float
    b: float
    r2: float
    b_stderr: float  # standard error of b (nan with fewer than 3 points)
    n: int
    x_min: float
    x_max: float

    def __call__(self, x):
        """The fitted curve at x (scalar or array)."""
        return self.a * np.asarray(x, np.float64) ** self.b

    def to_dict(self) -> dict:
        """JSON-ready fields (nan -> None)."""
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in dataclasses.asdict(self).items()
        }

    def equation(self, x_name: str = "x", y_name: str = "L") -> str:
        """`L = 0.9 x^-0.0425 (R^2 0.989)` as text."""
        return f"{y_name} = {self.a:.3g} {x_name}^{self.b:.4f} (R\u00b2 {self.r2:.3f})"


def fit_power_law(x_n, y_n) -> PowerLaw:
    """Least squares of log y on log x: y = a x^b, with R^2 and the exponent's standard error."""
    x_n, y_n = np.asarray(x_n, np.float64), np.asarray(y_n, np.float64)
    if x_n.shape != y_n.shape or x_n.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length; got {x_n.shape} and {y_n.shape}")
    if len(x_n) < 2:
        raise ValueError(f"a power-law fit needs at least 2 points; got {len(x_n)}")
    if np.any(x_n <= 0) or np.any(y_n <= 0):
        raise ValueError("a power-law fit needs positive x and y (it works in log space)")
    if np.ptp(np.log(x_n)) == 0:
        raise ValueError(f"all {len(x_n)} points have the same x = {x_n[0]:g}: no slope to fit")
    lx_n, ly_n = np.log(x_n), np.log(y_n)
    dx_n = lx_n - lx_n.mean()
    sxx = float(dx_n @ dx_n)
    b = float(dx_n @ (ly_n - ly_n.mean()) / sxx)
    log_a = float(ly_n.mean() - b * lx_n.mean())
    resid_n = ly_n - (log_a + b * lx_n)
    ss_res = float(resid_n @ resid_n)
    ss_tot = float(((ly_n - ly_n.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    stderr = float(np.sqrt(ss_res / (len(x_n) - 2) / sxx)) if len(x_n) > 2 else float("nan")
    return PowerLaw(
        a=float(np.exp(log_a)),
        b=b,
        r2=float(r2),
        b_stderr=stderr,
        n=len(x_n),
        x_min=float(x_n.min()),
        x_max=float(x_n.max()),
    )


def pareto_frontier(x_n, y_n) -> np.ndarray:
    """Indices of the lower envelope, by increasing x: points whose y is below that of every
    point with smaller or equal x (the cheapest of equal points)."""
    x_n, y_n = np.asarray(x_n, np.float64), np.asarray(y_n, np.float64)
    order = np.lexsort((y_n, x_n))  # by x, then by y
    keep, best = [], np.inf
    for i in order:
        if y_n[i] < best:
            keep.append(i)
            best = y_n[i]
    return np.asarray(keep, dtype=np.int64)


def compute_frontier(compute_n, loss_n, params_n) -> dict:
    """The compute-optimal frontier of evaluation points: its indices, L = a C^b on it, and
    N_opt = k C^c when it holds two or more sizes (each with None and a reason otherwise)."""
    compute_n, loss_n, params_n = (np.asarray(v, np.float64) for v in (compute_n, loss_n, params_n))
    idx = pareto_frontier(compute_n, loss_n)
    out = {"indices": idx.tolist(), "loss_vs_compute": None, "optimal_params": None, "note": ""}
    notes = []
    if len(idx) >= 2:
        out["loss_vs_compute"] = fit_power_law(compute_n[idx], loss_n[idx])
    else:
        notes.append(f"the frontier has {len(idx)} point(s): no loss fit")
    sizes_on_frontier = np.unique(params_n[idx])
    if len(sizes_on_frontier) >= 2:
        out["optimal_params"] = fit_power_law(compute_n[idx], params_n[idx])
    else:
        notes.append(f"the frontier holds {len(sizes_on_frontier)} size(s): no N_opt(C) fit")
    out["note"] = "; ".join(notes)
    return out
