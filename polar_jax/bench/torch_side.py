"""Shared by the PyTorch baselines of the benchmarks: the timing loop (this module imports no
JAX, so baselines run under another interpreter) and the call that runs a baseline in-process
or under `--torch-python`."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time


def median_seconds(run, repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_baseline(module: str, args: tuple, torch_python: str | None) -> dict | None:
    """`polar_jax.bench.<module>.main(*args)` here if torch imports, else in `torch_python`
    (its JSON line); None when neither is possible."""
    try:
        import importlib

        import torch  # noqa: F401

        return importlib.import_module(f"polar_jax.bench.{module}").main(*args)
    except ImportError:
        pass
    if not torch_python:
        return None
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [torch_python, "-m", f"polar_jax.bench.{module}", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
