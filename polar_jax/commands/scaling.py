"""Scaling-law study: train a family of reward-model sizes (or print their pod-slice launch
commands), then fit L = a N^b and L = a C^b and plot them; rerun to resume.

    python -m polar_jax scaling --config configs/scaling/cpu_synthetic.py --workdir DIR [--config.KEY=VALUE ...]
    python -m polar_jax scaling --config configs/scaling/family.py --workdir DIR --launch pod --tpu NAME --zone ZONE

Writes DIR/runs/NAME/ (one training run each), DIR/scaling.csv (a row per run: size, compute,
held-out loss, status), DIR/fit.json (the fits with R^2, the compute-optimal frontier, the
paper's fits) and DIR/loss_vs_params.png, DIR/loss_vs_compute.png (and optimal_params.png).
Finished runs are not rerun; a failed run is reported and the fits use the rest.
Exit code: 0 all runs finished, 1 some failed, are stale or (pod) still pending, 2 bad config.

Where it lives: `scaling/sweep.py` drives the study; `scaling/planning.py` turns the config into
the runs; `scaling/running.py` trains each one with `train/trainer.py`; `scaling/results.py`
and `fit.py` collect and fit; `report.py` and `plots.py` write the outputs.
"""

from __future__ import annotations

import argparse
import logging
import pathlib

from polar_jax.config_loading import load_config
from polar_jax.errors import UserError
from polar_jax.io.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `scaling` (config overrides come as extra --config.KEY=VALUE arguments)."""
    parser.add_argument(
        "--config", required=True, help="configs/scaling/NAME.py (optionally NAME.py:ARG: ARG goes to its get_config)"
    )
    parser.add_argument("--workdir", required=True, help="the sweep's directory: runs/, scaling.csv, fit.json, *.png")
    parser.add_argument(
        "--launch",
        choices=("local", "pod"),
        default="local",
        help="local: train the runs here, one after another; pod: print a launch/tpu_pod.sh "
        "command per unfinished run (and DIR/launch_pod.sh), then fit what has finished",
    )
    parser.add_argument("--tpu", default="TPU_NAME", help="pod: the TPU VM name written into the launch lines")
    parser.add_argument("--zone", default="ZONE", help="pod: the TPU VM's zone written into the launch lines")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated run or size names to train (a size: all its seeds; the fit uses every finished run)",
    )
    parser.add_argument("--collect-only", action="store_true", help="train nothing; fit and plot the finished runs")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Plan the sweep, run (or print) it, collect, fit, write the results."""
    from polar_jax.scaling import sweep

    workdir = pathlib.Path(args.workdir)
    config = load_config(args.config, args.overrides, check="scaling")
    plans = sweep.plan(config, workdir, check=args.launch == "local" and not (args.collect_only or args.list))
    if args.list:
        print(sweep.describe_plans(plans))
        return 0
    with WorkdirLock(workdir, "scaling"):  # one sweep per workdir (its runs lock their own directories too)
        return _sweep(args, config, plans, workdir)


def _sweep(args: argparse.Namespace, config, plans, workdir: pathlib.Path) -> int:
    """Run (or print) the chosen runs, then collect, fit and write the results."""
    from polar_jax.scaling import sweep

    only = {n for n in args.only.split(",") if n}
    unknown = only - {p.name for p in plans} - {p.size for p in plans}
    if unknown:
        raise UserError(
            f"--only {','.join(sorted(unknown))}: no such run or size; the runs are {', '.join(p.name for p in plans)}"
        )
    chosen = [p for p in plans if not only or p.name in only or p.size in only]
    if args.collect_only:
        pass
    elif args.launch == "pod":
        commands = sweep.pod_commands(chosen, args.tpu, args.zone)
        script = workdir / "launch_pod.sh"
        workdir.mkdir(parents=True, exist_ok=True)
        script.write_text(sweep.launch_script(commands))
        script.chmod(0o755)
        print("\n".join(commands) if commands else "# every run has finished")
        log.info(
            "%d launch command(s) (also in %s); rerun this command when they are done to fit and plot",
            len(commands),
            script,
        )
    else:
        sweep.run_local(chosen, progress=not args.no_progress)
    rows, curves = sweep.collect(plans, config.fit_params)
    fit = sweep.analyse(rows, curves, config.fit_params)
    paths = sweep.write_results(workdir, rows, curves, fit)
    print(sweep.summary(rows, fit))
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0 if all(r["status"] == "finished" for r in rows) else 1
