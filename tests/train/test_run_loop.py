"""The run loop on its own (`train/loop.py`), with a toy state and step: when hooks run, what
is logged and saved, a resume from the newest checkpoint, the divergence stop."""

import json
import os
import signal

import grain
import jax.numpy as jnp
import ml_collections
import pytest

from polar_jax.io import checkpoint
from polar_jax.train import loop


def counter():
    """A Grain data iterator 1, 2, 3, ... (its position is saved with each checkpoint)."""
    return iter(grain.MapDataset.range(1, 10_000).to_iter_dataset())


def config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            mesh=dict(data=-1, fsdp=1, tensor=1),
            keep_checkpoints=10,
            log_every=2,
            checkpoint_every=3,
            checkpoint_minutes=1e9,
            max_bad_steps=2,
            seed=0,
            data=dict(kind="synthetic"),
        )
    )
    c.update(overrides)
    return c


def run(workdir, cfg, *, total=7, bad_from=None, hooks=(), on_step=None):
    """Train the toy state x -> x + data for `total` steps; returns (run, final x)."""
    data = counter()

    def step_fn(state, index):
        x = state["x"] + next(data)
        bad = 0 if bad_from is None or index + 1 < bad_from else index + 2 - bad_from
        if on_step is not None:
            on_step(index + 1)
        return {"x": x}, {"loss": x / 10, "bad_streak": jnp.asarray(bad)}

    with loop.Run(cfg, workdir, inputs={}, total=total, progress=False) as r:
        abstract = {"x": jnp.zeros((), jnp.float32)}
        state = r.restore_or_init(abstract, lambda: {"x": jnp.zeros((), jnp.float32)}, data)
        state = r.loop(step_fn, state, data, log_spec=loop.Log(postfix={"loss": ("loss", ".2f")}), hooks=hooks)
    return r, float(state["x"])


def logged(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_hooks_logging_and_saves_follow_their_cadence(tmp_path):
    calls = []
    hooks = (
        loop.Hook(lambda s, state, m: calls.append(("every3", s)), every=3, at_end=False),
        loop.Hook(lambda s, state, m: {"eval_": {"x": float(state["x"])}}, every=4, name="eval"),
    )
    r, x = run(tmp_path, config(), hooks=hooks)
    assert x == sum(range(1, 8))  # 1 + 2 + ... + 7
    assert calls == [("every3", 3), ("every3", 6)]  # at_end=False: not at the last step
    rows = logged(tmp_path)
    assert [row["step"] for row in rows if "loss" in row] == [2, 4, 6, 7]  # every 2 and the last step
    assert [(row["step"], row["eval_x"]) for row in rows if "eval_x" in row] == [(4, 10.0), (7, 28.0)]
    assert checkpoint.Checkpointer(tmp_path).steps() == [3, 6, 7]
    assert (r.result.step, r.result.stopped_by, r.finished) == (7, "done", True)
    assert r.hook_outputs["eval"] == {"eval_": {"x": 28.0}}
    assert r.result.metrics == pytest.approx({"loss": 2.8, "bad_streak": 0.0})
    assert json.loads((tmp_path / "config.json").read_text())["checkpoint_every"] == 3
    assert (tmp_path / "run.json").is_file()


@pytest.mark.parametrize("at, saves", [(3, [3]), (4, [3, 4])])
def test_a_signal_saves_its_step_once_and_a_rerun_resumes_there(tmp_path, monkeypatch, at, saves):
    saved = []
    real_save = checkpoint.Checkpointer.save

    def counting_save(self, step, *args, **kwargs):
        saved.append(step)
        return real_save(self, step, *args, **kwargs)

    def signal_at(step):
        if step == at:  # 3 is a checkpoint step: the periodic save and the save on signal are one
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", counting_save)
    r, x = run(tmp_path, config(), on_step=signal_at)
    monkeypatch.undo()
    assert (r.result.step, r.result.stopped_by, r.finished, x) == (at, "signal", False, sum(range(1, at + 1)))
    assert saved == saves
    r, x = run(tmp_path, config())  # resumes where the signal stopped it, the data position restored
    assert (r.start, r.result.step, x) == (at, 7, sum(range(1, 8)))


def test_divergence_stops_at_the_first_step_the_loop_reads_and_keeps_good_checkpoints(tmp_path):
    with pytest.raises(loop.TrainingDiverged, match=r"2 non-finite steps in a row .* up to step 4.*steps \[3\]"):
        run(tmp_path, config(), bad_from=3)  # bad_streak 2 at step 4: read there (a log step)
    assert [row["step"] for row in logged(tmp_path)] == [2, 4]  # the diverged step is logged too
    assert checkpoint.Checkpointer(tmp_path).steps() == [3]


def test_host_metrics_are_checked_after_every_step(tmp_path):
    cfg = config(log_every=0, checkpoint_every=0)
    with pytest.raises(loop.TrainingDiverged, match="up to step 4"):
        with loop.Run(cfg, tmp_path, inputs={}, total=7, progress=False) as r:
            state = r.restore_or_init({"x": jnp.zeros(())}, lambda: {"x": jnp.zeros(())}, counter())

            def step_fn(state, index):
                return state, {"loss": 0.0, "bad_streak": float(max(0, index - 1))}

            r.loop(step_fn, state, counter(), log_spec=loop.Log(host_metrics=True))


@pytest.mark.parametrize(
    "every, at_end, due",
    [(3, True, [3, 6, 7]), (3, False, [3, 6]), (0, True, [7]), (0, False, []), (1, False, [1, 2, 3, 4, 5, 6])],
)
def test_hook_due(every, at_end, due):
    hook = loop.Hook(lambda *a: None, every=every, at_end=at_end)
    assert [s for s in range(1, 8) if hook.due(s, 7)] == due
