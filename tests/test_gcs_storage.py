"""Bucket workdirs (`--workdir gs://BUCKET/RUN`) against a local GCS emulator (`gcp-storage-emulator`,
started here on 127.0.0.1): a train run and an RFT run leave their checkpoints, metrics.jsonl,
TensorBoard events, run.json and final model in the bucket, and a run stopped by SIGTERM then
resumed from the bucket equals the uninterrupted local run, bit for bit.

Every client is pointed at the emulator the way it documents: gcsfs and google-cloud-storage
(TensorBoard's events) by STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) by
TENSORSTORE_GCS_HTTP_URL. The emulator ignores GCS's create-only precondition, so the lock's
race between two creators is not exercised here; a lock already in the bucket is."""

import http.server
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import fsspec
import jax
import numpy as np
import pytest
from multiprocess_helpers import free_port

from polar_jax.config_loading import load_config
from polar_jax.io import models, polar_format, storage
from polar_jax.io.workdir_lock import WorkdirBusy, WorkdirLock
from polar_jax.rft import trainer as rft_trainer
from polar_jax.train import loop, trainer
from tests.rft.conftest import rft_jsonl, tiny  # noqa: F401 - the RFT tests' tiny models and data
from tests.rft.test_rft_loop import CONFIG as RFT_CONFIG
from tests.rft.test_rft_loop import untimed
from tests.train.test_trainer import config as train_config
from tests.train.test_trainer import losses

BUCKET = "polar-test"
# The emulator, serving in memory until its standard input closes: when this test process has
# exited, after tensorboardX's event writers have uploaded their buffers once more while they are
# finalised. (It would otherwise rewrite a JSON file of every object's metadata on each request,
# O(objects) per write: saves got 4x slower as a run went on; in memory nothing needs it.)
EMULATOR = """
import os, sys
import gcp_storage_emulator.storage as storage
from gcp_storage_emulator.server import create_server
storage.Storage._write_config_to_file = lambda self: None
create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).start()
sys.stdin.read()
os._exit(0)
"""


@pytest.fixture(scope="module")
def bucket():
    """The emulator's bucket as `gs://polar-test`, the clients' environment pointed at it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", EMULATOR, str(port), BUCKET],
        stdin=subprocess.PIPE,  # never closed here: the emulator ends with this process
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the GCS emulator did not start"
            time.sleep(0.2)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    fsspec.filesystem("gs").invalidate_cache()
    yield f"gs://{BUCKET}"
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def listing(remote: str) -> set[str]:
    """Every object below `remote`, relative to it."""
    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    root = remote.removeprefix("gs://")
    return {p.removeprefix(root + "/") for p in fs.find(root)}


def download(remote: str, local: pathlib.Path) -> pathlib.Path:
    fs = fsspec.filesystem("gs")
    for rel in listing(remote):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{remote}/{rel}".removeprefix("gs://"), str(local / rel))
    return local


def stop_at(monkeypatch, step: int) -> None:
    """SIGTERM to this process once `step`'s metrics are logged (the loop stops at that step)."""
    write = loop.Run.write

    def write_then_stop(self, at, metrics, prefix=""):
        write(self, at, metrics, prefix)
        if at == step and not prefix:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.Run, "write", write_then_stop)


@pytest.mark.slow
def test_train_in_a_bucket_resumes_bit_exact(bucket, tmp_path, monkeypatch):
    local = trainer.train(train_config("--config.steps=8"), tmp_path / "local", progress=False)
    assert local.step == 8

    run = f"{bucket}/train"
    with monkeypatch.context() as m:
        stop_at(m, 6)
        stopped = trainer.train(train_config("--config.steps=8"), run, progress=False)
    assert (stopped.step, stopped.stopped_by) == (6, "signal")
    objects = listing(run)
    assert {"config.json", "run.json", "metrics.jsonl"} <= objects
    assert any(p.startswith("checkpoints/4/") for p in objects) and any(p.startswith("checkpoints/6/") for p in objects)
    assert "checkpoints/6/sha256sums.json" in objects  # the checksums of a bucket step too
    assert not any(p.startswith("model/") for p in objects)
    assert ".polar_jax.lock" not in objects  # released at the stop

    resumed = trainer.train(train_config("--config.steps=8"), run, progress=False)  # from the bucket's step 6
    assert resumed.step == 8
    objects = listing(run)
    assert any(p.startswith("tensorboard/events.out.tfevents") for p in objects)
    assert "model/polar_model.json" in objects and any(p.startswith("model/params/") for p in objects)
    downloaded = download(run, tmp_path / "downloaded")
    assert losses(downloaded) == losses(tmp_path / "local")  # steps 1..8, each logged once
    run_json = json.loads((downloaded / "run.json").read_text())
    assert len(run_json["previous"]) == 1  # two starts, both recorded
    for a, b in zip(
        jax.tree.leaves(polar_format.load_polar(downloaded / "model").params),
        jax.tree.leaves(polar_format.load_polar(tmp_path / "local" / "model").params),
    ):
        np.testing.assert_array_equal(a, b)


def test_a_lock_in_the_bucket_refuses_a_second_run(bucket):
    workdir = f"{bucket}/locked"
    with WorkdirLock(workdir, "train") as held:
        assert held.held and ".polar_jax.lock" in listing(workdir)
        other = json.loads((storage.path(workdir) / ".polar_jax.lock").read_text())
        other.update(host="another-host")
        (storage.path(workdir) / ".polar_jax.lock").write_text(json.dumps(other))  # a run on another host
        with pytest.raises(WorkdirBusy, match="another-host"):
            trainer.train(train_config(), workdir, progress=False)
    (storage.path(workdir) / ".polar_jax.lock").unlink()


@pytest.mark.slow
def test_rft_in_a_bucket_resumes_bit_exact(bucket, tiny, rft_jsonl, tmp_path):  # noqa: F811
    config_file = tmp_path / "rft_tiny.py"
    config_file.write_text(
        RFT_CONFIG.format(
            policy=tiny["policy"],
            reward=tiny["reward"],
            target=tiny["target"],
            train=rft_jsonl[0],
            eval=rft_jsonl[1],
            iterations=3,
        )
    )
    config = load_config(str(config_file))
    local = rft_trainer.train(config, tmp_path / "local", progress=False)
    assert local.step == 3

    run = f"{bucket}/rft"

    def sigterm_at_2(iteration, _metrics):
        if iteration == 2:
            signal.raise_signal(signal.SIGTERM)

    stopped = rft_trainer.train(config, run, progress=False, on_iteration=sigterm_at_2)
    assert (stopped.step, stopped.stopped_by) == (2, "signal")
    assert any(p.startswith("checkpoints/2/") for p in listing(run))
    resumed = rft_trainer.train(config, run, progress=False)
    assert (resumed.step, resumed.stopped_by) == (3, "done")

    downloaded = download(run, tmp_path / "downloaded")
    rows = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert untimed(rows(downloaded)) == untimed(rows(tmp_path / "local"))
    assert (downloaded / "tensorboard").is_dir() and (downloaded / "rft_results.json").is_file()
    results = json.loads((downloaded / "rft_results.json").read_text())
    assert results["policy"] == f"{run}/policy"
    for a, b in zip(
        jax.tree.leaves(models.load_model(downloaded / "policy").params),
        jax.tree.leaves(models.load_model(tmp_path / "local" / "policy").params),
    ):
        np.testing.assert_array_equal(a, b)


class Forbidden(http.server.BaseHTTPRequestHandler):
    """A GCS endpoint that refuses every request (403), as GCS does credentials without access."""

    def refuse(self):
        body = json.dumps({"error": {"code": 403, "message": "no storage.objects.list access"}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = refuse

    def log_message(self, *args):
        pass


def test_a_bucket_that_refuses_access_stops_the_run_with_what_to_check():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {
        **os.environ,
        "STORAGE_EMULATOR_HOST": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [sys.executable, "-m", "polar_jax", "train", "--config", "configs/pretrain_tiny.py", "--no-progress"]
    try:
        proc = subprocess.run(
            cmd + ["--workdir", "gs://polar-test/nowhere"],
            env=env,
            cwd=pathlib.Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("polar-jax train: error: --workdir gs://polar-test/nowhere: cannot reach the bucket")
    assert "Forbidden" in last and "check the credentials" in last
