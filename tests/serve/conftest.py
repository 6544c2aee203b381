"""The real server in a subprocess on 127.0.0.1 (a free port), over the `score` fixture's reward model
(tests/fixtures/score: transformers' scores of the official client's texts) with SmolLM2's tokenizer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from polar_jax.data import encoding
from polar_jax.io import gguf, hf, tokenizers

MAX_LENGTH = 512  # the server's --max-length: widths 64, 128, 256, 512


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory, request):
    """(model directory, reference.json): the fixture's reward model exported by polar_jax."""
    src = request.config.rootpath / "tests" / "fixtures" / "score"
    try:
        tokenizer = tokenizers.load_tokenizer(gguf.smollm2_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    encoding.resolve_reward_token_id(tokenizer, encoding.EncodingConfig(), add_missing=True)
    out = tmp_path_factory.mktemp("serve_rm")
    hf.save_hf(hf.load_hf(src), out)
    tokenizer.save_pretrained(str(out))
    shutil.copy(src / "rows.jsonl", out / "rows.jsonl")
    return out, json.loads((src / "reference.json").read_text())


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `python -m polar_jax serve` process and its address."""

    def __init__(self, model_dir, *flags: str, devices: int = 1, log_path=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        argv = [sys.executable, "-m", "polar_jax", "serve", "--model", str(model_dir), "--port", str(self.port)]
        argv += ["--max-length", str(MAX_LENGTH), "--max-response-length", str(MAX_LENGTH // 4), *flags]
        self.log_path = log_path
        self.log = open(log_path, "w+b") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=env)

    def output(self) -> str:
        """What the server printed so far."""
        if not self.log_path:
            return ""
        self.log.flush()
        return open(self.log_path, errors="replace").read()

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until GET /health answers 200 (warm-up compiled every bucket)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.output()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            if self.log_path:
                self.log.close()


@pytest.fixture
def start_server(tmp_path):
    """`start_server(model_dir, *flags, devices=1)`: a ready server, stopped after the test."""
    started = []

    def start(model_dir, *flags, devices: int = 1, ready: bool = True) -> Server:
        server = Server(model_dir, *flags, devices=devices, log_path=tmp_path / f"server{len(started)}.log")
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(rm_dir, tmp_path_factory):
    """One ready server (vLLM /pooling, 2 devices) for the tests that only send requests."""
    server = Server(rm_dir[0], devices=2, log_path=tmp_path_factory.mktemp("shared_server") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


SERVE_ENCODING = encoding.EncodingConfig(max_length=MAX_LENGTH, max_response_length=MAX_LENGTH // 4)  # the flags above


@pytest.fixture(scope="session")
def serve_encoding() -> encoding.EncodingConfig:
    """The encoding every `Server` here scores with (its --max-length and --max-response-length)."""
    return SERVE_ENCODING


@pytest.fixture(scope="session")
def rm_tokenizer(rm_dir):
    """The served model's tokenizer, loaded as the server loads it."""
    return tokenizers.load_tokenizer(str(rm_dir[0]))


@pytest.fixture(scope="session")
def offline_rewards(rm_dir, rm_tokenizer):
    """`offline_rewards(rows, **kw)`: float32 [len(rows)] rewards of rows as `score` computes them (`scoring.score_rows`)
    with the servers' encoding (`SERVE_ENCODING`); `kw` goes to `score_rows` (batch_size, shared_prefix)."""
    from polar_jax import scoring
    from polar_jax.io import models

    model = models.load_model(rm_dir[0])

    def rewards(rows: list[dict], **kw):
        return scoring.score_rows(model, rm_tokenizer, rows, SERVE_ENCODING, progress=False, **kw)

    return rewards
