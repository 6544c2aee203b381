"""MetricsWriter on a rerun: a partial trailing line is dropped with a warning (FILE:LINE) and the
run resumes; a (step, key) already in the kept file is not written again."""

from __future__ import annotations

import json
import logging

from polar_jax.train.metrics import MetricsWriter


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _log(workdir, resume_step, rows):
    writer = MetricsWriter(workdir, resume_step=resume_step)
    for step, metrics in rows:
        writer.write(step, metrics)
    writer.close()


def test_partial_trailing_line_is_dropped_with_a_warning(tmp_path, caplog):
    _log(tmp_path, 0, [(1, {"loss": 1.0}), (2, {"loss": 0.5})])
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 3, "lo')  # the disk filled up mid-line
    with caplog.at_level(logging.WARNING, logger="polar_jax.train.metrics"):
        _log(tmp_path, 2, [(3, {"loss": 0.25})])
    assert _rows(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]
    assert f"{path}:3: dropped its last line" in caplog.text


def test_rerun_does_not_repeat_a_step_and_key(tmp_path):
    # RFT logs the iteration-0 evaluation at step 0 on every start, and the final one at the last step.
    _log(
        tmp_path, 0, [(0, {"eval_reward": 0.1}), (1, {"reward": 1.0}), (2, {"reward": 2.0}), (2, {"eval_reward": 0.9})]
    )
    _log(tmp_path, 2, [(0, {"eval_reward": 0.1}), (2, {"eval_reward": 0.9, "extra": 7.0})])
    assert _rows(tmp_path / "metrics.jsonl") == [
        {"step": 0, "eval_reward": 0.1},
        {"step": 1, "reward": 1.0},
        {"step": 2, "reward": 2.0},
        {"step": 2, "eval_reward": 0.9},
        {"step": 2, "extra": 7.0},  # only the key the step did not hold yet
    ]


def test_lines_past_the_restored_step_are_redone(tmp_path):
    _log(tmp_path, 0, [(1, {"loss": 1.0}), (2, {"loss": 0.5}), (3, {"loss": 0.2})])
    _log(tmp_path, 2, [(3, {"loss": 0.3})])  # step 3 was past the checkpoint: redone, logged once
    assert _rows(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5},
        {"step": 3, "loss": 0.3},
    ]


def test_same_key_twice_within_one_run_is_kept(tmp_path):
    _log(tmp_path, 0, [(1, {"loss": 1.0}), (1, {"loss": 2.0})])
    assert [r["loss"] for r in _rows(tmp_path / "metrics.jsonl")] == [1.0, 2.0]
