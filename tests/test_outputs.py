"""Outputs are checked first and written atomically (issue 15, item 3): `score --output` and
`evaluate --output` refuse a directory, an unwritable or uncreatable parent before any model is
loaded or row scored (a missing parent is created); the file is written to a temporary sibling and
renamed, so a failure or a kill mid-write leaves the old file as it was and no partial one."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from polar_jax.__main__ import main as cli
from tests.test_evaluate import ROWS, _write
from tests.test_input_kinds import _score_rows, tiny  # noqa: F401 (a fixture)

OLD = "the old results\n"


def _args(kind, tiny, data, output):  # noqa: F811
    if kind == "score":
        return ["score", "--model", str(tiny["rm"]), "--input", str(data), "--output", str(output)]
    return ["evaluate", "--model", str(tiny["rm"]), "--input", str(data), "--no-progress", "--output", str(output)]


def _data(kind, tmp_path):
    return _write(tmp_path / "in.jsonl", _score_rows(3) if kind == "score" else ROWS[:3])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command loads its model (the output must be refused before any work)."""
    monkeypatch.setattr("polar_jax.io.models.load_model", lambda *a, **k: pytest.fail("loaded the model"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no file can be created in: mode 0555, or (as root, whom modes do not stop) a read-only tmpfs."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("kind", ["score", "evaluate"])
def test_a_directory_output_is_refused_before_any_work(kind, tiny, tmp_path, capsys, no_work):  # noqa: F811
    assert cli(_args(kind, tiny, _data(kind, tmp_path), tmp_path)) == 2
    assert f"error: --output {tmp_path} is a directory; give a file path" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["score", "evaluate"])
def test_a_read_only_output_directory_is_refused_before_any_work(kind, tiny, tmp_path, read_only_dir, capsys, no_work):  # noqa: F811
    out = read_only_dir / "o.json"
    assert cli(_args(kind, tiny, _data(kind, tmp_path), out)) == 2
    assert f"error: --output {out}: cannot write in {read_only_dir}" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["score", "evaluate"])
def test_an_uncreatable_parent_is_refused_before_any_work(kind, tiny, tmp_path, capsys, no_work):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    out = blocker / "sub" / "o.json"
    assert cli(_args(kind, tiny, _data(kind, tmp_path), out)) == 2
    assert f"error: --output {out}: cannot create its directory {blocker / 'sub'}" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["score", "evaluate"])
def test_a_missing_parent_is_created(kind, tiny, tmp_path):  # noqa: F811
    out = tmp_path / "new" / "deeper" / "o.json"
    assert cli(_args(kind, tiny, _data(kind, tmp_path), out)) == 0
    text = out.read_text()
    if kind == "score":
        assert [json.loads(line)["prompt"] for line in text.splitlines()] == [r["prompt"] for r in _score_rows(3)]
    else:
        assert json.loads(text)["groups"]["all"]["n"] == 3
    assert os.listdir(out.parent) == ["o.json"]  # no temporary left beside it


def test_score_failing_mid_write_leaves_the_old_file(tiny, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "o.jsonl"
    out.write_text(OLD)
    data = _data("score", tmp_path)
    import polar_jax.commands.score as score_cmd

    calls, real = [], json.dumps

    def dumps(obj, **kw):  # the second row meets a full disk
        calls.append(obj)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, **kw)

    monkeypatch.setattr(score_cmd.json, "dumps", dumps)
    assert cli(_args("score", tiny, data, out)) == 2  # a full disk: one line, exit 2
    assert len(calls) == 2 and out.read_text() == OLD
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "o.jsonl"]


def test_evaluate_failing_mid_write_leaves_the_old_file(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "o.json"
    out.write_text(OLD)
    data = _data("evaluate", tmp_path)
    real = pathlib.Path.write_text

    def half(self, text, *a, **k):  # writes half, then the disk is full
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    assert cli(_args("evaluate", tiny, data, out)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_text() == OLD
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "o.json"]


KILLED_MID_WRITE = """
import json, os, signal, sys
import polar_jax.commands.score as score_cmd
from polar_jax.__main__ import main
written, real = [], json.dumps
def dumps(obj, **kw):
    written.extend([obj] if isinstance(obj, dict) and "reward" in obj else [])  # the scored rows only
    if len(written) == 3:  # two rows are written, the third never comes
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, **kw)
score_cmd.json.dumps = dumps
main(sys.argv[1:])
"""


def test_score_killed_mid_write_leaves_the_old_file(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "o.jsonl"
    out.write_text(OLD)
    data = _write(tmp_path / "in.jsonl", _score_rows(5))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), *_args("score", tiny, data, out)],
        env=env,
        capture_output=True,
        cwd=pathlib.Path(__file__).parents[1],
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert out.read_text() == OLD  # the old file, whole; the new one never appeared under its name
