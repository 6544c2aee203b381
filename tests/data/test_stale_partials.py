"""`prepare` removes a killed run's `.DIR.partial-PID` when that PID no longer runs on this host,
and leaves one whose process is alive; both are logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from polar_jax.__main__ import main
from polar_jax.io import stale_partials

ROW = {"prompt": "p", "reference": "r", "chosen": "c", "rejected": "d"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not stale_partials.pid_alive(proc.pid)
    return proc.pid


def test_prepare_removes_a_dead_runs_partial_directory(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".out.partial-{dead}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "triplets-00000-of-00001.array_record").write_bytes(b"x" * 100)
    running = tmp_path / f".out.partial-{alive}"
    running.mkdir()
    other = tmp_path / f".other.partial-{dead}"  # another output's: not this run's business
    other.mkdir()
    # the tokenizer is missing: prepare fails after the clean-up, which comes first
    main(
        [
            "prepare",
            "--input",
            str(data),
            "--tokenizer",
            str(tmp_path / "no-tok"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert not stale.exists()
    assert running.is_dir() and other.is_dir()
    err = capsys.readouterr().err  # the CLI logs to stderr
    assert f"removed {stale}, left by process {dead}" in err
    assert f"left {running} in place: process {alive}" in err


def test_remove_stale_keeps_this_process_own(tmp_path):
    mine = tmp_path / f".out.partial-{os.getpid()}"
    mine.mkdir()
    loose = tmp_path / f".out.partial-{_dead_pid()}"
    loose.write_text("a file left by a killed atomic write")
    assert stale_partials.remove_stale(tmp_path / "out") == [loose]
    assert mine.is_dir() and not loose.exists()
