"""The run loop every trainer uses: one run's lifetime in a workdir, and the step loop itself.

    with loop.Run(config, workdir, inputs=..., total=config.steps, unit="step") as run:
        state = run.restore_or_init(abstract_state, make_state, data_iterator)
        state = run.loop(step_fn, state, data_iterator, log=loop.Log(...), hooks=[loop.Hook(...)])
        if run.finished:
            ...  # the stage's outputs (final model, results)
    run.result  # RunResult: last step, why it stopped, last logged metrics, each hook's last output

A stage brings only its set-up and its step (`step_fn(state, index) -> (state, metrics)`);
the loop owns what every run does the same way: the workdir's lock (`io.workdir_lock`: one
run per workdir), the refusal to resume checkpoints with a config that changes the result
(`check_resume_config`: the differing keys are listed, nothing is moved), config.json and
run.json (`run_manifest`) at every start and resume, the mesh, restore-or-init from the newest checkpoint, metrics.jsonl
and TensorBoard (`MetricsWriter`), a progress bar, hooks every N steps, a checkpoint every
`checkpoint_every` steps / `checkpoint_minutes` minutes / at the last step / when SIGTERM or
SIGINT arrives (one save per step: saving a step twice makes orbax raise
StepAlreadyExistsError; with several processes, a signal to any one of them stops every one
after the same step: the processes agree after each step, `parallel.any_process`), the
divergence stop, and closing everything whatever happens.

Config keys read: mesh, keep_checkpoints, log_every, checkpoint_every, checkpoint_minutes,
max_bad_steps (0 = never for the *_every keys; the last step is still logged and saved).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from polar_jax import parallel, run_manifest
from polar_jax.config_checks import config_difference
from polar_jax.errors import UserError
from polar_jax.io import checkpoint, content_id, storage
from polar_jax.io.workdir_lock import WorkdirLock
from polar_jax.train.metrics import MetricsWriter

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    """How a run ended: its last step, why it stopped, the last logged metrics and what the
    stage adds (train: the last held-out evaluation; RFT: its results and data counts)."""

    step: int
    stopped_by: str  # "done" | "signal"
    metrics: dict  # the last logged training metrics
    eval_metrics: dict = dataclasses.field(default_factory=dict)  # train: the last evaluation on the held-out split
    results: dict = dataclasses.field(default_factory=dict)  # RFT: rft_results.json's contents, else {}
    data: dict = dataclasses.field(default_factory=dict)  # RFT: prompts kept / dropped as over-long


@dataclasses.dataclass(frozen=True)
class Hook:
    """Work done between steps: `fn(step, state, metrics)` after every `every`-th step (0 =
    never), and at the run's last step too when `at_end` (never there when not). It returns
    `{prefix: metrics}` to log (e.g. {"eval_": {...}}) or None."""

    fn: Callable[[int, Any, dict], dict | None]
    every: int = 1
    at_end: bool = True
    name: str = ""

    def due(self, step: int, total: int) -> bool:
        """Whether the hook runs after `step` of a run of `total` steps."""
        if step == total:
            return self.at_end
        return bool(self.every) and step % self.every == 0


@dataclasses.dataclass(frozen=True)
class Log:
    """How a stage's step metrics are logged: `read(step, metrics)` turns them into the logged
    dict (default: floats of every value); `postfix` names the progress bar's fields; `hint`
    ends the divergence error (what to change). `host_metrics`: the step returns host floats,
    so the divergence counter is read after every step (otherwise only at log and save steps,
    where the loop waits for the device anyway)."""

    postfix: dict = dataclasses.field(
        default_factory=dict
    )  # bar field -> (metric, format), e.g. {"loss": ("loss", ".4f")}
    read: Callable[[int, dict], dict] | None = None
    hint: str = "lower the learning rate or check the data"
    host_metrics: bool = False


# Config keys a resumed run may change: where and how it runs, how often it logs / saves /
# evaluates, not what it computes. A resume that changes any other key is refused.
RESUME_FREE_KEYS = (
    "mesh",
    "log_every",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "eval_every",
    "max_bad_steps",
    "peak_tflops",
    "start_over",
    "allow_changed_config",
    "setup_hint",
    "data.num_workers",
    "model.remat",
    "model.scan_unroll",
    "model.attention_impl",
    "policy.remat",
    "policy.scan_unroll",
    "policy.attention_impl",
    "rollout.slots",  # the engine's outputs do not depend on its slot count
    "reward.server",  # a reward server may move between runs (the same model behind it)
    "reward.api_key",
    "reward.server_wait",
    "reward.server_timeout",
)
# Config keys whose values never reach config.json, checkpoints or run.json (written as REDACTED).
SECRET_KEYS = ("reward.api_key",)
REDACTED = "<redacted>"


def redact_secrets(resolved: dict) -> dict:
    """`resolved` with every non-empty `SECRET_KEYS` value replaced by `REDACTED`."""
    for dotted in SECRET_KEYS:
        *parents, leaf = dotted.split(".")
        node = resolved
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = REDACTED
    return resolved


class ConfigChanged(UserError):
    """A rerun on a workdir with checkpoints whose config changes the result."""


def check_resume_config(workdir: pathlib.Path, resolved: dict) -> None:
    """Refuse to resume `workdir`'s checkpoints with a config that differs from its config.json in
    anything but `RESUME_FREE_KEYS` (paths compare as the files they name, not their spelling);
    with allow_changed_config set, resume with a warning that lists the changes."""
    saved, checkpoints = workdir / "config.json", workdir / "checkpoints"
    if not saved.is_file() or not any(p.name.isdigit() for p in checkpoints.glob("*")):
        return
    old = _resolved_paths(json.loads(saved.read_text()))
    new = _same_content_as(old, _resolved_paths(resolved))
    diff = config_difference(old, new, limit=8, ignore=RESUME_FREE_KEYS)
    if diff and resolved.get("allow_changed_config"):
        log.warning("resuming %s with a changed config (allow_changed_config): %s", checkpoints, diff)
    elif diff:
        raise ConfigChanged(
            f"{workdir} holds checkpoints of another config ({diff}): resuming them with this one would mix two "
            f"runs. Set those keys back to resume, start this config in another --workdir (the checkpoints in "
            f"{checkpoints} stay as they are), or resume them anyway with --config.allow_changed_config=True"
        )


def _same_content_as(old, new):
    """`new` with each path value that names other real paths than `old`'s but the same files
    (a moved or copied input: `io.content_id`) replaced by `old`'s value."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _same_content_as(old.get(k), v) for k, v in new.items()}
    if isinstance(old, str) and isinstance(new, str) and old != new and _paths(old) and _paths(new):
        if [content_id.identity(p) for p in old.split(",")] == [content_id.identity(p) for p in new.split(",")]:
            return old
    return new


def _paths(value: str) -> bool:
    return bool(value) and all(os.path.exists(p) for p in value.split(","))


def _resolved_paths(tree):
    """`tree` with every string naming existing paths (comma-separated too) as their real paths."""
    if isinstance(tree, dict):
        return {k: _resolved_paths(v) for k, v in tree.items()}
    if isinstance(tree, str) and _paths(tree):
        return ",".join(os.path.realpath(p) for p in tree.split(","))
    return tree


class Run:
    """One run's lifetime in `workdir`: config.json and run.json written, the mesh built (and
    its logical-axis rules in force inside the `with`), the checkpointer and metrics writer
    opened and, on leaving the `with`, closed. `workdir` is a directory or a `gs://` bucket
    location (`io.storage`)."""

    def __init__(
        self,
        config,
        workdir,
        *,
        inputs: dict,
        total: int,
        unit: str = "step",
        desc: str = "train",
        progress: bool = True,
    ):
        self.config, self.total, self.unit, self.desc, self.progress = config, total, unit, desc, progress
        self.workdir = storage.path(workdir)
        storage.check_reachable(self.workdir)
        self.resolved = redact_secrets(json.loads(config.to_json()))
        self.lock = WorkdirLock(self.workdir, desc, enabled=jax.process_index() == 0).acquire()
        try:
            check_resume_config(self.workdir, self.resolved)
            if jax.process_index() == 0:
                (self.workdir / "config.json").write_text(json.dumps(self.resolved, indent=2) + "\n")
            self.mesh = parallel.make_mesh(dict(config.mesh))
            log.info(
                "mesh %s over %d devices (%s)", dict(self.mesh.shape), self.mesh.size, jax.devices()[0].device_kind
            )
            run_manifest.write(self.workdir, config, inputs, mesh=self.mesh)  # run.json; warns on changed inputs
            self.ckpt = checkpoint.Checkpointer(self.workdir, keep=config.keep_checkpoints)
        except BaseException:
            self.lock.release()
            raise
        self.writer: MetricsWriter | None = None
        self.start = self.step = 0
        self.stopped_by = "done"
        self.logged: dict = {}
        self.hook_outputs: dict[str, dict] = {}

    def __enter__(self) -> Run:
        self._rules = parallel.use_rules(self.mesh)  # the model's logical axes -> this mesh, for all inside
        self._rules.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._rules.__exit__(*exc)
        try:  # a failed last save raises here only when nothing else did: the first error is the one shown
            self.ckpt.close(raise_errors=exc[0] is None)
        finally:
            try:
                if self.writer is not None:
                    self.writer.close()
            finally:
                self.lock.release()
        if exc[0] is None:
            log.info(
                "metrics in %s, TensorBoard events in %s", self.workdir / "metrics.jsonl", self.workdir / "tensorboard"
            )

    @property
    def finished(self) -> bool:
        """The loop ran to the last step (not stopped by a signal)."""
        return self.step == self.total and self.stopped_by == "done"

    @property
    def result(self) -> RunResult:
        """The run's outcome so far (stages fill in eval_metrics / results / data)."""
        return RunResult(step=self.step, stopped_by=self.stopped_by, metrics=self.logged)

    def restore_or_init(self, abstract_state, make_state: Callable[[], Any], data_iterator=None):
        """The newest readable checkpoint restored onto `abstract_state`'s shardings (with the
        data iterator's position), or `make_state()` at step 0; opens the metrics writer there."""
        start, state = self.ckpt.restore_latest(
            abstract_state, data_iterator, start_over=bool(self.config.get("start_over", False))
        )
        if state is None:
            start, state = 0, make_state()
        else:
            log.info("resumed from %s %s %d", self.ckpt.directory, self.unit, start)
        self.start = self.step = start
        self.writer = MetricsWriter(self.workdir, resume_step=start)
        return state

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Log `metrics` at `step` to metrics.jsonl and TensorBoard (keys prefixed)."""
        self.writer.write(step, metrics, prefix)

    def loop(
        self,
        step_fn: Callable[[Any, int], tuple[Any, dict]],
        state,
        data_iterator=None,
        *,
        log_spec: Log,
        hooks: tuple[Hook, ...] = (),
    ):
        """Run `step_fn(state, index)` from the restored step to `total`, logging, running the
        hooks, saving and stopping as the module docstring says; returns the last state."""
        stop = StopOnSignal()
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, unit=self.unit, disable=not self.progress)
        last_save = time.monotonic()
        try:
            while self.step < self.total:
                state, metrics = step_fn(state, self.step)
                self.step += 1
                bar.update(1)
                self._log_and_check(metrics, log_spec, bar, at_save=self._at_save())
                for hook in hooks:
                    if hook.due(self.step, self.total):
                        self._run_hook(hook, state, metrics)
                requested = stop.requested  # read once: a signal arriving later counts at the next step
                minutes = (time.monotonic() - last_save) / 60
                if jax.process_count() > 1:  # agree: a signal to any process stops all; process 0's clock saves
                    flags_p2 = parallel.concat_processes(np.float64([[requested is not None, minutes]]))
                    if flags_p2[:, 0].any():
                        requested = requested or "a signal to another process"
                    minutes = float(flags_p2[0, 1])
                if requested:
                    log.warning("%s received: saving %s %d and exiting", requested, self.unit, self.step)
                if self._at_save() or minutes >= self.config.checkpoint_minutes or requested:
                    self.ckpt.save(self.step, state, data_iterator, self.resolved, force=True)
                    last_save = time.monotonic()
                if requested:
                    self.stopped_by = "signal"
                    break
        finally:
            bar.close()
            stop.restore()
        return state

    def _at_save(self) -> bool:
        every = self.config.checkpoint_every
        return self.step == self.total or bool(every) and self.step % every == 0

    def _log_and_check(self, metrics: dict, spec: Log, bar, at_save: bool) -> None:
        """Log at log steps; stop with TrainingDiverged after max_bad_steps skipped steps in a row.
        Reading the guard's counter waits for the step, so only where the loop waits anyway;
        skipped steps leave the parameters untouched, so a late stop loses no good work."""
        every = self.config.log_every
        at_log = self.step == self.total or bool(every) and self.step % every == 0
        diverged = (at_log or at_save or spec.host_metrics) and int(metrics["bad_streak"]) >= self.config.max_bad_steps
        if at_log or diverged:
            self.logged = spec.read(self.step, metrics) if spec.read else {k: float(v) for k, v in metrics.items()}
            self.write(self.step, self.logged)
            bar.set_postfix({name: format(self.logged[key], fmt) for name, (key, fmt) in spec.postfix.items()})
        if diverged:
            raise TrainingDiverged(
                f"{self.config.max_bad_steps} non-finite steps in a row (loss, gradient or update NaN/Inf: the "
                f"optimiser skipped them) up to {self.unit} {self.step}; stopping. The last good checkpoint is in "
                f"{self.ckpt.directory} ({self.unit}s {self.ckpt.steps()}); {spec.hint}"
            )

    def _run_hook(self, hook: Hook, state, metrics: dict) -> None:
        out = hook.fn(self.step, state, metrics)
        for prefix, values in (out or {}).items():
            self.write(self.step, values, prefix)
        if out and hook.name:
            self.hook_outputs[hook.name] = out


class StopOnSignal:
    """Turns SIGTERM / SIGINT into a request the loop honours after the current step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def restore(self):
        """Put back the handlers that were installed before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
