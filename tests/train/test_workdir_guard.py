"""A workdir belongs to one run (issue 15): a second run on it is refused while the first
holds it, a stale lock is taken over, and a rerun whose config changes the result is refused
with the differing keys while the checkpoints stay where they are."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from polar_jax.io import checkpoint
from polar_jax.io.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock
from polar_jax.train import loop
from tests.train.test_run_loop import config, run

TAKE_LOCK = "import sys; from polar_jax.io.workdir_lock import WorkdirLock; WorkdirLock(sys.argv[1], 'train').acquire()"


def take_lock_in_another_process(workdir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TAKE_LOCK, str(workdir)], capture_output=True, text=True, timeout=60)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    with loop.Run(config(), tmp_path, inputs={}, total=3, progress=False):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (holder["command"], holder["pid"]) == ("train", os.getpid())
        other = take_lock_in_another_process(tmp_path)
        assert other.returncode != 0 and "WorkdirBusy" in other.stderr
        assert f"is in use by a train run (PID {os.getpid()} on this host" in other.stderr
        with pytest.raises(WorkdirBusy, match="wait for it to finish or use another --workdir"):
            loop.Run(config(), tmp_path, inputs={}, total=3, progress=False)
    assert not (tmp_path / LOCK_FILE).exists()  # released on leaving the run
    assert take_lock_in_another_process(tmp_path).returncode == 0


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_refused(tmp_path, caplog):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"command": "rft", "host": socket.gethostname(), "pid": dead_pid(), "started": "x"}))
    with caplog.at_level("WARNING"):
        with WorkdirLock(tmp_path, "train"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "the rft run" in caplog.text and "is gone; taking its lock over" in caplog.text
    lock.write_text("")  # killed between creating and writing it
    with WorkdirLock(tmp_path, "train"):
        pass
    lock.write_text(json.dumps({"command": "synth", "host": "elsewhere", "pid": 1, "started": "x"}))
    with pytest.raises(WorkdirBusy, match=f"PID 1 on host elsewhere.*if that run is gone, delete {lock}"):
        WorkdirLock(tmp_path, "train").acquire()
    assert lock.exists()  # not ours to remove


def test_a_changed_config_is_refused_with_its_keys_and_the_checkpoints_stay(tmp_path):
    run(tmp_path, config(), total=4)
    steps = checkpoint.Checkpointer(tmp_path).steps()
    assert steps == [3, 4]
    with pytest.raises(loop.ConfigChanged, match=r"seed: 0 there, 1 now.*another --workdir"):
        run(tmp_path, config(seed=1), total=7)
    assert checkpoint.Checkpointer(tmp_path).steps() == steps
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]  # nothing set aside
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0  # the workdir's config kept
    assert not (tmp_path / LOCK_FILE).exists()
    r, x = run(tmp_path, config(log_every=1, checkpoint_every=2, mesh={"data": 8}), total=7)  # how, not what
    assert (r.start, r.result.step, x) == (4, 7, sum(range(1, 8)))
    r, _ = run(tmp_path, config(seed=1, allow_changed_config=True), total=8)  # deliberately (after a divergence)
    assert (r.start, r.result.step) == (7, 8)


def test_a_path_respelled_is_the_same_config(tmp_path, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text("{}")
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "run"
    run(workdir, config(data={"kind": "synthetic", "train": "data.jsonl"}), total=4)
    r, _ = run(workdir, config(data={"kind": "synthetic", "train": str(data)}), total=6)
    assert r.start == 4
    copy = tmp_path / "copy.jsonl"
    copy.write_text(data.read_text())  # a copied input: the same files
    r, _ = run(workdir, config(data={"kind": "synthetic", "train": str(copy)}), total=7)
    assert r.start == 6
    changed = tmp_path / "changed.jsonl"
    changed.write_text("{} ")  # another path with other files
    with pytest.raises(loop.ConfigChanged, match="data.train"):
        run(workdir, config(data={"kind": "synthetic", "train": str(changed)}), total=8)
    with pytest.raises(loop.ConfigChanged, match="data.train"):
        run(workdir, config(data={"kind": "synthetic", "train": str(tmp_path / "other.jsonl")}), total=8)


def test_a_scaling_sweep_on_a_held_workdir_is_refused_in_one_line(tmp_path, capsys):
    from polar_jax.__main__ import main

    holder = {"command": "scaling", "host": socket.gethostname(), "pid": os.getpid(), "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    config = pathlib.Path(__file__).resolve().parents[2] / "configs" / "scaling" / "cpu_synthetic.py"
    assert main(["scaling", "--config", str(config), "--workdir", str(tmp_path), "--no-progress"]) == 2
    assert f"is in use by a scaling run (PID {os.getpid()} on this host" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_synth_and_the_demo_on_a_held_directory_are_refused_before_any_work(tmp_path):
    from polar_jax import demo
    from polar_jax.synth import synthesize

    with WorkdirLock(tmp_path, "synth"):
        with pytest.raises(WorkdirBusy, match="in use by a synth run"):
            synthesize.synthesize(None, None, None, tmp_path)  # refused before the pool or prompts are read
        with pytest.raises(WorkdirBusy, match="in use by a synth run"):
            demo.run_demo(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
