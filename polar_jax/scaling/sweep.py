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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import pathlib
import shlex
import time
import traceback
from typing import Callable

import ml_collections
import numpy as np

from polar_jax import run_manifest
from polar_jax.flops import train_flops_per_token
from polar_jax.models.config import ModelConfig
from polar_jax.scaling import fit as fitting
from polar_jax.scaling import sizes

log = logging.getLogger(__name__)

PFS_DAY = 1e15 * 86400  # FLOPs in one PF/s-day
CSV_FIELDS = (
    "name", "size", "seed", "status", "error", "init", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
    "mlp_dim", "vocab_size", "params", "params_non_embedding", "steps", "batch_size", "seq_len", "lr", "tokens_per_step",
    "tokens", "flops_per_token", "compute_flops", "compute_pfs_days", "eval_loss", "eval_accuracy", "train_loss",
    "wall_s",
)
SIZE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")


class SweepError(ValueError):
    """The sweep config cannot be planned (missing data, an impossible rule): nothing was run."""


@dataclasses.dataclass
class RunPlan:
    """One run of a sweep: its name, training config, workdir and model, and the size and seed
    it is a run of."""

    name: str
    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    model_cfg: ModelConfig | None  # None: a base LM whose shape is known once the run has finished
    size: str = ""  # the size's name ("" = `name`): the runs of one size are averaged in the fits
    seed: int = 0

    def __post_init__(self):
        if not self.size:
            self.size = self.name

    @property
    def steps(self) -> int:
        """Training steps of the run."""
        return int(self.config.steps)


# ---------------------------------------------------------------------------------- planning
def check_data(sweep: ml_collections.ConfigDict) -> None:
    """Raise SweepError, with the config's `data_hint`, when the training data is missing."""
    data = sweep.train.data
    if data.kind != "array_record":
        return
    missing = [f"{key}={p!r}" if p else f"{key} is empty" for key, spec in (("data.train", data.train),
                                                                             ("data.eval", data.eval))
               for p in spec.split(",") if not p or not pathlib.Path(p).exists()]
    if missing:
        hint = sweep.get("data_hint", "") or "Point --config.data_dir (or --config.train.data.train/eval) at them."
        raise SweepError(f"training data not found ({'; '.join(missing)}). {hint}")


def resolve_data(sweep: ml_collections.ConfigDict) -> None:
    """Fill `train.data.train/eval` from `data_dir` when set: DIR/train, and DIR/SPLIT for each
    comma-separated split of `eval_split` (default heldout_prompts; several are evaluated as one set)."""
    if sweep.get("data_dir", ""):
        root = pathlib.Path(sweep.data_dir)
        splits = [s.strip() for s in sweep.get("eval_split", "heldout_prompts").split(",") if s.strip()]
        if not splits:
            raise SweepError("eval_split is empty: name a split of data_dir, e.g. heldout_prompts or heldout_policies")
        sweep.train.data.kind = "array_record"
        sweep.train.data.train = str(root / "train")
        sweep.train.data.eval = ",".join(str(root / s) for s in splits)


def sweep_seeds(sweep: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The training seeds of every size: `seeds` (an int or a tuple of distinct ints >= 0)."""
    seeds = sweep.get("seeds", (0,))
    seeds = tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds={seeds!r}: give one or more distinct integers >= 0, e.g. (0, 1, 2)")
    return seeds


def run_name(size: str, seed: int, seeds: tuple[int, ...]) -> str:
    """The run's name: the size's name for the default seeds (0,), else SIZE-sSEED."""
    return size if seeds == (0,) else f"{size}-s{seed}"


def data_vocab_size(train: ml_collections.ConfigDict) -> int:
    """The model vocabulary a from-scratch run needs: the synthetic ids, or `prepare`'s
    encoding.json vocab_size rounded up to a multiple of 64."""
    if train.model.vocab_size is not None:
        return int(train.model.vocab_size)
    if train.data.kind == "synthetic":
        return int(train.data.synthetic_vocab_size)
    encoding = pathlib.Path(train.data.train.split(",")[0]) / "encoding.json"
    if not encoding.exists():
        raise SweepError(f"{encoding} not found: cannot size the vocabulary; set --config.train.model.vocab_size")
    return -(-int(json.loads(encoding.read_text())["vocab_size"]) // 64) * 64


def base_model_config(path: str) -> ModelConfig | None:
    """The shape of a base LM from its polar_jax or HF directory (None for other formats)."""
    from polar_jax.io import polar_format
    from polar_jax.models import families

    p = pathlib.Path(path)
    if polar_format.is_polar_dir(p):
        return ModelConfig.from_dict(json.loads((p / polar_format.META_FILE).read_text())["model_config"])
    if (p / "config.json").exists():
        return families.config_from_hf(json.loads((p / "config.json").read_text()))
    return None


def counted_params(model_cfg: ModelConfig, which: str) -> int:
    """The parameter count fits use: "non_embedding" (default; Kaplan et al.) or "total"."""
    if which not in ("non_embedding", "total"):
        raise SweepError(f"fit_params={which!r}; choose non_embedding or total")
    return model_cfg.num_params(include_embedding=which == "total")


def _runs(sweep) -> list[tuple[str, dict | None, str]]:
    """(name, shape or None, init) of every run, smallest first."""
    if sweep.get("base_models", ""):
        out = []
        for item in sweep.base_models.split(","):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise SweepError(f"base_models entry {item!r}: expected NAME=PATH (comma-separated)")
            out.append((name.strip(), None, path.strip()))
        return out
    rule = sizes.DepthWidthRule(**dict(sweep.family))
    layers = sweep.layers if isinstance(sweep.layers, (tuple, list)) else (sweep.layers,)
    return [(name, shape, "scratch") for name, shape in sizes.family(rule, tuple(int(n) for n in layers)).items()]


def plan(sweep: ml_collections.ConfigDict, workdir: str | pathlib.Path, check: bool = True) -> list[RunPlan]:
    """Every run's full training config (budget, LR and batch rules applied); with `check`,
    fails fast (SweepError) when the training data is missing."""
    sweep = ml_collections.ConfigDict(sweep.to_dict())  # resolve_data writes into it
    resolve_data(sweep)
    if check:
        check_data(sweep)
    workdir = pathlib.Path(workdir)
    seeds = sweep_seeds(sweep)
    plans = []
    for (name, shape, init), seed in ((run, seed) for run in _runs(sweep) for seed in seeds):
        c = ml_collections.ConfigDict(sweep.train.to_dict())
        c.seed = seed
        if shape is not None:
            c.model.init = "scratch"
            c.model.update(shape)
            c.model.vocab_size = data_vocab_size(sweep.train)
            model_cfg = ModelConfig(**{k: c.model[k] for k in SIZE_FIELDS}, heads=("reward",))
        else:
            c.model.init = init
            for k in SIZE_FIELDS:
                c.model[k] = None
            model_cfg = base_model_config(init)
        try:
            _apply_rules(sweep, c, name, model_cfg)
        except SweepError:
            raise
        except ValueError as e:  # a rule that cannot apply (the paper's LR from scratch, ...)
            raise SweepError(f"run {name}: {e}") from e
        full_name = run_name(name, seed, seeds)
        plans.append(RunPlan(full_name, c, workdir / "runs" / full_name, model_cfg, size=name, seed=seed))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise SweepError(f"run names repeat: {names}")
    return plans


def _apply_rules(sweep, c, name: str, model_cfg: ModelConfig | None) -> None:
    """Batch, steps, LR and the evaluation / logging / checkpoint cadence of one run."""
    budget, lr_rule, batch_rule = sweep.budget, sweep.lr, sweep.batch
    needs_n = budget.kind == "tokens_per_param" or "paper" in (lr_rule.rule, batch_rule.rule)
    if needs_n and model_cfg is None:
        raise SweepError(f"run {name}: the budget or LR/batch rule needs the parameter count, and its base model "
                         f"{c.model.init} is neither a polar_jax nor an HF directory; use fixed rules and a step budget")
    n = counted_params(model_cfg, sweep.fit_params) if model_cfg is not None else None
    if budget.kind == "steps":
        tokens = None
    elif budget.kind == "tokens":
        tokens = float(budget.value)
    elif budget.kind == "tokens_per_param":
        tokens = float(budget.value) * n
    else:
        raise SweepError(f"budget.kind={budget.kind!r}; choose steps, tokens or tokens_per_param")
    if batch_rule.rule == "paper":
        if tokens is None:
            raise SweepError("batch.rule=paper needs a token budget (budget.kind tokens or tokens_per_param)")
        samples = sizes.paper_batch(model_cfg.num_params() / 1e6, tokens / 1e6)
        c.data.batch_size = sizes.rows_for_samples(samples, batch_rule.pairs_per_row, batch_rule.multiple)
    elif batch_rule.rule != "fixed":
        raise SweepError(f"batch.rule={batch_rule.rule!r}; choose fixed or paper")
    tokens_per_step = c.data.batch_size * c.data.seq_len * budget.fill
    c.steps = int(budget.value) if tokens is None else max(1, math.ceil(tokens / tokens_per_step))
    if lr_rule.rule == "paper":
        rm_tokens = tokens if tokens is not None else c.steps * tokens_per_step
        c.optim.lr = sizes.paper_lr(model_cfg.num_params() / 1e6, lr_rule.base_tokens_m, rm_tokens / 1e6)
    elif lr_rule.rule != "fixed":
        raise SweepError(f"lr.rule={lr_rule.rule!r}; choose fixed or paper")
    if sweep.evals_per_run < 1:
        raise SweepError("evals_per_run must be >= 1: the validation loss comes from the evaluations")
    c.eval_every = max(1, c.steps // sweep.evals_per_run)
    c.log_every = max(1, c.steps // sweep.logs_per_run)
    c.checkpoint_every = max(1, c.steps // sweep.checkpoints_per_run)


def describe_plans(plans: list[RunPlan]) -> str:
    """A table of the planned runs: shape, parameters, steps, batch, LR, planned tokens."""
    lines = [f"{'run':>8} {'seed':>4} {'layers':>6} {'d_model':>7} {'params (non-emb.)':>17} {'steps':>7} "
             f"{'batch':>6} {'seq_len':>7} {'lr':>9}  workdir"]
    for p in plans:
        m, c = p.model_cfg, p.config
        lines.append(f"{p.name:>8} {p.seed:>4} {m.num_layers if m else '?':>6} {m.d_model if m else '?':>7} "
                     f"{format(m.num_params(include_embedding=False), ',d') if m else '?':>17} {p.steps:>7} "
                     f"{c.data.batch_size:>6} {c.data.seq_len:>7} {c.optim.lr:>9.3g}  {p.workdir}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- run state
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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(old: dict, new: dict, limit: int = 5) -> str:
    """The differing keys of two configs as text, at most `limit` of them ("" when equal)."""
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{key}: {a.get(key, '<absent>')!r} there, {b.get(key, '<absent>')!r} now"
             for key in sorted(set(a) | set(b)) if a.get(key, "<absent>") != b.get(key, "<absent>")]
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _started(workdir: pathlib.Path) -> bool:
    return (workdir / "metrics.jsonl").exists() or (workdir / "checkpoints").exists()


def stale_message(run: RunPlan) -> str:
    """Why the run's workdir holds results of another config ("" when it does not)."""
    path = run.workdir / "run_config.json"
    if not (path.exists() and _started(run.workdir)):
        return ""
    diff = config_difference(json.loads(path.read_text()), json.loads(run.config.to_json()))
    if not diff:
        return ""
    return (f"{run.workdir} holds a run of a different config ({diff}); delete that directory to rerun it, "
            "or use another --workdir")


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


# ---------------------------------------------------------------------------------- running
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
        log.info("%s: training %d steps (%s, lr %.3g, batch %d x %d tokens) in %s", tag, run.steps,
                 _describe_model(run), run.config.optim.lr, run.config.data.batch_size, run.config.data.seq_len,
                 run.workdir)
        start = time.perf_counter()
        try:
            result = train_fn(run.config, run.workdir, progress)
            if not (run.workdir / run_manifest.FILENAME).exists():  # the trainer writes it at its start
                run_manifest.write(run.workdir, run.config, run_manifest.train_inputs(run.config))
            if getattr(result, "stopped_by", "done") == "signal":
                wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
                write_status(run, status="pending", error="", wall_s=wall)
                log.warning("%s: interrupted; rerun the same command to resume the sweep", tag)
                out[run.name] = "pending"
                break
            if not is_finished(run):
                raise RuntimeError(f"training returned without an evaluation at step {run.steps} in "
                                   f"{run.workdir / 'metrics.jsonl'}")
        except Exception as e:  # noqa: BLE001 - any failure of one run is reported, and the sweep goes on
            wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
            message = f"{type(e).__name__}: {e}"
            log.error("%s: failed after %.0f s: %s", tag, time.perf_counter() - start, message)
            log.debug("%s", traceback.format_exc())
            write_status(run, status="failed", error=message, wall_s=wall)
            out[run.name] = "failed"
            continue
        wall = time.perf_counter() - start + read_status(run).get("wall_s", 0.0)
        write_status(run, status="finished", error="", wall_s=wall)
        log.info("%s: finished in %.0f s", tag, time.perf_counter() - start)
        out[run.name] = "finished"
    return out


def _describe_model(run: RunPlan) -> str:
    if run.model_cfg is None:
        return f"from {run.config.model.init}"
    m = run.model_cfg
    return (f"{m.num_layers} layers x {m.d_model}, {m.num_params(include_embedding=False):,} non-embedding params"
            + ("" if run.config.model.init == "scratch" else f", from {run.config.model.init}"))


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
    return ("#!/usr/bin/env bash\n# Written by `python -m polar_jax scaling --launch pod`: one run per line, on one "
            "slice.\n# Split the lines over several slices to run them at once; rerun the scaling command "
            "afterwards.\n" + body)


# ---------------------------------------------------------------------------------- collecting
def collect(plans: list[RunPlan], fit_params: str = "non_embedding") -> tuple[list[dict], dict[str, list[dict]]]:
    """(one row per run for scaling.csv, {name: its evaluations with compute}) from the runs'
    metrics files and sweep_status.json."""
    rows, curves = [], {}
    for run in plans:
        saved = read_status(run) if run.workdir.exists() else {}
        stale = stale_message(run)
        if stale:
            status = "stale"
        elif is_finished(run):
            status = "finished"
        else:
            status = "failed" if saved.get("status") == "failed" else "pending"
        error = stale or (saved.get("error", "") if status == "failed" else "")
        model_cfg = _finished_model_config(run) or run.model_cfg
        metrics = read_metrics(run.workdir)
        train_rows = [r for r in metrics if "tokens" in r]
        evals = [r for r in metrics if "eval_loss" in r]
        c = run.config
        tokens_per_step = (float(np.mean([r["tokens"] for r in train_rows])) if train_rows
                           else c.data.batch_size * c.data.seq_len * 1.0)
        fpt = train_flops_per_token(model_cfg, c.data.seq_len) if model_cfg is not None else float("nan")
        row = dict.fromkeys(CSV_FIELDS, "")
        row.update(name=run.name, size=run.size, seed=run.seed, status=status, error=error, init=c.model.init,
                   steps=run.steps, batch_size=c.data.batch_size, seq_len=c.data.seq_len, lr=c.optim.lr,
                   wall_s=saved.get("wall_s", ""))
        if model_cfg is not None:
            row.update({k: getattr(model_cfg, k) for k in SIZE_FIELDS})
            row.update(params=model_cfg.num_params(), params_non_embedding=model_cfg.num_params(include_embedding=False),
                       flops_per_token=fpt)
        if status == "finished":
            final = next(r for r in reversed(evals) if r["step"] == run.steps)
            tokens = tokens_per_step * run.steps
            row.update(tokens_per_step=tokens_per_step, tokens=tokens, compute_flops=fpt * tokens,
                       compute_pfs_days=fpt * tokens / PFS_DAY, eval_loss=final["eval_loss"],
                       eval_accuracy=final.get("eval_accuracy", ""),
                       train_loss=train_rows[-1].get("loss", "") if train_rows else "")
            by_step = {}
            for r in evals:  # a resumed run may repeat a step: the last one counts
                by_step[r["step"]] = r
            n = counted_params(model_cfg, fit_params) if model_cfg is not None else float("nan")
            curves[run.name] = [
                {"step": s, "eval_loss": r["eval_loss"], "eval_accuracy": r.get("eval_accuracy"),
                 "compute_flops": fpt * tokens_per_step * s, "compute_pfs_days": fpt * tokens_per_step * s / PFS_DAY,
                 "params": n}
                for s, r in sorted(by_step.items())
            ]
        rows.append(row)
    return rows, curves


def _finished_model_config(run: RunPlan) -> ModelConfig | None:
    meta = run.workdir / "model" / "polar_model.json"
    if meta.exists():
        return ModelConfig.from_dict(json.loads(meta.read_text())["model_config"])
    return None


# ---------------------------------------------------------------------------------- fitting
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
        out.append({
            "size": size, "params": runs[0][param_key], "runs": [r["name"] for r in runs],
            "seeds": [r.get("seed", 0) for r in runs], "eval_losses": loss_n.tolist(),
            "eval_loss": float(loss_n.mean()), "eval_loss_std": float(loss_n.std(ddof=1)) if len(runs) > 1 else None,
            "eval_accuracy": float(np.mean(accuracies)) if accuracies else None,
            "compute_pfs_days": float(np.mean([r["compute_pfs_days"] for r in runs])),
            "curve": mean_curve([curves.get(r["name"], []) for r in runs]),
        })
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
        "params": fit_params, "compute_unit": "PF/s-days (1e15 FLOP/s for one day)",
        "loss": "final held-out eval_loss (Bradley-Terry), the mean over each size's finished seeds",
        "fit_space": "least squares in log-log space, one point per size",
        "runs": {"total": len(rows), "finished": [r["name"] for r in rows if r["status"] == "finished"],
                 "failed": [{"name": r["name"], "error": r["error"]} for r in rows if r["status"] == "failed"],
                 "stale": [{"name": r["name"], "error": r["error"]} for r in rows if r["status"] == "stale"],
                 "pending": [r["name"] for r in rows if r["status"] == "pending"]},
        "sizes": means,
        "paper": fitting.PAPER,
    }
    y_n = np.array([m["eval_loss"] for m in means], np.float64)
    for key, x_key in (("loss_vs_params", "params"), ("loss_vs_compute", "compute_pfs_days")):
        out[key] = _try_fit(np.array([m[x_key] for m in means], np.float64), y_n)
    points = [(m["size"], p) for m in means for p in m["curve"]]
    out["frontier"] = {"points": [], "loss_vs_compute": None, "optimal_params": None, "note": ""}
    if points:
        c_n = np.array([p["compute_pfs_days"] for _, p in points])
        l_n = np.array([p["eval_loss"] for _, p in points])
        n_n = np.array([p["params"] for _, p in points])
        try:
            frontier = fitting.compute_frontier(c_n, l_n, n_n)
        except ValueError as e:
            out["frontier"]["note"] = str(e)
        else:
            out["frontier"] = {
                "points": [{"size": points[i][0], "step": points[i][1]["step"], "compute_pfs_days": float(c_n[i]),
                            "eval_loss": float(l_n[i]), "params": float(n_n[i])} for i in frontier["indices"]],
                "loss_vs_compute": _as_dict(frontier["loss_vs_compute"]),
                "optimal_params": _as_dict(frontier["optimal_params"]), "note": frontier["note"],
            }
    else:
        out["frontier"]["note"] = "no finished run"
    return out


def _as_dict(law):
    return law.to_dict() if law is not None else None


def _try_fit(x_n, y_n) -> dict:
    try:
        return fitting.fit_power_law(x_n, y_n).to_dict() | {"note": ""}
    except ValueError as e:
        return {"note": f"no fit: {e}"}


# ---------------------------------------------------------------------------------- writing
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
        lines.append(f"{r['name']:>8} {r['status']:>9} {_fmt(r['params_non_embedding'], ',d'):>11} "
                     f"{_fmt(r['compute_pfs_days'], '.3g'):>10} {_fmt(r['eval_loss'], '.4f'):>9} "
                     f"{_fmt(r['eval_accuracy'], '.3f'):>6} {_fmt(r['wall_s'], '.0f'):>7}")
        if r["error"]:
            lines.append(f"{'':>8} {r['error']}")
    sizes_ = fit.get("sizes", [])
    if any(len(m["runs"]) > 1 for m in sizes_):
        lines.append(f"{'size':>8} {'seeds':>5} {'params':>11} {'PF/s-days':>10} {'mean loss':>9} {'std':>6}  "
                     "loss per seed")
        for m in sizes_:
            per_seed = ", ".join(f"s{seed} {loss:.4f}" for seed, loss in zip(m["seeds"], m["eval_losses"]))
            lines.append(f"{m['size']:>8} {len(m['runs']):>5} {_fmt(m['params'], ',d'):>11} "
                         f"{m['compute_pfs_days']:>10.3g} {m['eval_loss']:>9.4f} "
                         f"{_fmt(m['eval_loss_std'] if m['eval_loss_std'] is not None else '', '.4f'):>6}  {per_seed}")
    paper = fitting.PAPER
    for key, x, unit in (("loss_vs_params", "N", "params"), ("loss_vs_compute", "C", "final points")):
        f = fit[key]
        text = (f"L = {f['a']:.3g} {x}^{f['b']:.4f} (R^2 {f['r2']:.3f}, {f['n']} sizes)" if "b" in f else f["note"])
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
    return "-" if value == "" else format(value, spec)
