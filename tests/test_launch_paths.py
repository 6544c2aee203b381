"""launch/ scripts read relative path arguments from the caller's directory, not the repository's.

Each script runs from a copy of launch/ in a fake repository whose .venv/bin/python (and gcloud,
scontrol, srun on PATH) only record what they were given and where: the path handling is the
script's own, and nothing is installed or trained."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
RECORD = '#!/usr/bin/env bash\n{ echo "cwd=$PWD"; for a in "$@"; do echo "arg=$a"; done; } >> "$RECORD_FILE"\n'
FAKE_PYTHON = RECORD + 'while [ $# -gt 0 ]; do [ "$1" = --workdir ] && mkdir -p "$2"; shift; done\n'


def _exe(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake(tmp_path):
    """(repo, caller dir, env, record file): launch/ copied into a fake repository."""
    repo, caller, bin_dir = tmp_path / "repo", tmp_path / "elsewhere", tmp_path / "bin"
    shutil.copytree(LAUNCH, repo / "launch")
    _exe(repo / "launch" / "setup.sh", "#!/usr/bin/env bash\nexit 0\n")  # no installs
    _exe(repo / ".venv" / "bin" / "python", FAKE_PYTHON)
    _exe(bin_dir / "gcloud", RECORD)
    _exe(bin_dir / "srun", '#!/usr/bin/env bash\n[ "$1" = --ntasks-per-node=1 ] && shift\nexec "$@"\n')
    (caller / "configs").mkdir(parents=True)
    (caller / "configs" / "c.py").write_text("")
    (caller / "data.jsonl").write_text("")
    record = tmp_path / "record.txt"
    env = dict(os.environ, RECORD_FILE=str(record), PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("SLURM_JOB_ID", None), env.pop("SLURM_SUBMIT_DIR", None), env.pop("POLAR_JAX_REPO", None)
    return repo, caller, env, record


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def _recorded(record: pathlib.Path) -> list[str]:
    return record.read_text().splitlines()


def test_local_writes_the_workdir_under_the_caller(fake):
    repo, caller, env, record = fake
    _run(
        ["bash", str(repo / "launch" / "local.sh"), "configs/c.py", "runs/w", "--config.data.train=data.jsonl"],
        caller,
        env,
    )
    assert (caller / "runs" / "w").is_dir() and not (repo / "runs").exists()
    assert _recorded(record) == [f"cwd={caller}", "arg=-m", "arg=polar_jax", "arg=train", "arg=--config",
                                 "arg=configs/c.py", "arg=--workdir", "arg=runs/w", "arg=--config.data.train=data.jsonl"]  # fmt: skip


def test_tpu_pod_passes_caller_paths(fake):
    repo, caller, env, record = fake
    (repo / "configs").mkdir()
    (repo / "configs" / "r.py").write_text("")
    sub = repo / "sub"  # called from inside the checkout: its config goes as a checkout path
    sub.mkdir()
    _run(["bash", str(repo / "launch" / "tpu_pod.sh"), "tpu", "zone", "../configs/r.py", "runs/w"], sub, env)
    remote = _recorded(record)[-1]
    assert "--config configs/r.py " in remote and f"--workdir {sub}/runs/w" in remote
    assert remote.rstrip().endswith(f"--workdir {sub}/runs/w")  # no stray '' argument without overrides
    record.unlink()
    argv = ["tpu", "zone", "configs/c.py:data.jsonl", "runs/w", "--config.data.train=data.jsonl", "--config.x=abc"]
    _run(["bash", str(repo / "launch" / "tpu_pod.sh"), *argv], caller, env)
    remote = _recorded(record)[-1]
    assert f"--config {caller}/configs/c.py:{caller}/data.jsonl --workdir {caller}/runs/w" in remote
    assert f"--config.data.train={caller}/data.jsonl --config.x=abc" in remote


def test_slurm_finds_the_repo_and_keeps_the_caller_directory(fake, tmp_path):
    repo, caller, env, record = fake
    spool = tmp_path / "spool"  # sbatch runs a copy of the script from its spool directory
    spool.mkdir()
    shutil.copy(repo / "launch" / "slurm_gpu.sbatch", spool / "slurm_script")
    _exe(
        pathlib.Path(env["PATH"].split(":")[0]) / "scontrol",
        f'#!/bin/sh\necho "   Command={repo}/launch/slurm_gpu.sbatch"\n',
    )
    env = dict(env, SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=str(caller))
    _run(["bash", str(spool / "slurm_script"), "configs/c.py", "runs/w"], tmp_path, env)
    assert (caller / "runs" / "w").is_dir() and not (repo / "runs").exists()
    assert _recorded(record)[:1] == [f"cwd={caller}"]


def test_bench_gpu_writes_a_relative_outdir_under_the_caller(fake):
    repo, caller, env, record = fake
    env = dict(env, PYTHON="./py")
    _exe(caller / "py", RECORD)
    _run(["bash", str(repo / "launch" / "bench_gpu.sh"), "out", "none"], caller, env)
    assert (caller / "out" / "gpu_bench.log").is_file() and not (repo / "out").exists()
    assert _recorded(record)[0] == f"cwd={repo}"  # the benchmarks themselves run in the repository
