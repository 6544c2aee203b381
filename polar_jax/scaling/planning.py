"""The plan of a scaling sweep: every run's name, training config, workdir and model shape,
from a sweep config (`configs/scaling/*.py`), with the budget, LR and batch rules applied.

Run names and the rules are described in `polar_jax.scaling.sweep`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import ml_collections

from polar_jax.models.config import ModelConfig
from polar_jax.scaling import sizes

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


def check_data(sweep: ml_collections.ConfigDict) -> None:
    """Raise SweepError, with the config's `data_hint`, when the training data is missing."""
    data = sweep.train.data
    if data.kind != "array_record":
        return
    missing = [
        f"{key}={p!r}" if p else f"{key} is empty"
        for key, spec in (("data.train", data.train), ("data.eval", data.eval))
        for p in spec.split(",")
        if not p or not pathlib.Path(p).exists()
    ]
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
    if (
        not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
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


def _size_runs(sweep) -> list[tuple[str, dict | None, str]]:
    """(size name, shape or None, init) of every size of the sweep, smallest first: the family's sizes, or the
    base models of `base_models`."""
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
    for (name, shape, init), seed in ((run, seed) for run in _size_runs(sweep) for seed in seeds):
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
        raise SweepError(
            f"run {name}: the budget or LR/batch rule needs the parameter count, and its base model "
            f"{c.model.init} is neither a polar_jax nor an HF directory; use fixed rules and a step budget"
        )
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
    lines = [
        f"{'run':>8} {'seed':>4} {'layers':>6} {'d_model':>7} {'params (non-emb.)':>17} {'steps':>7} "
        f"{'batch':>6} {'seq_len':>7} {'lr':>9}  workdir"
    ]
    for p in plans:
        m, c = p.model_cfg, p.config
        lines.append(
            f"{p.name:>8} {p.seed:>4} {m.num_layers if m else '?':>6} {m.d_model if m else '?':>7} "
            f"{format(m.num_params(include_embedding=False), ',d') if m else '?':>17} {p.steps:>7} "
            f"{c.data.batch_size:>6} {c.data.seq_len:>7} {c.optim.lr:>9.3g}  {p.workdir}"
        )
    return "\n".join(lines)
