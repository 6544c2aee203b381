"""`serve` takes what `score` takes: an official-layout InternLM2ForRewardModel directory (remote-code
tokenizer, `reward_token_id` in config.json) is served with --trust-remote-code and scores as the
remote-code path does offline, on /score and on the client's texts; without the flag it stops
with one line naming the flag."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import httpx
import numpy as np
from transformers import AutoTokenizer

from polar_jax import scoring
from polar_jax.data import encoding
from polar_jax.io import hf

REMOTE_CODE_TESTS = pathlib.Path(__file__).parents[1] / "io" / "test_remote_code.py"


def remote_code_fixtures():
    """tests/io/test_remote_code.py as a module (`internlm2_dir`, `ROWS`)."""
    spec = importlib.util.spec_from_file_location("remote_code_tests_for_serve", REMOTE_CODE_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_internlm2_layout_is_served_like_score(start_server, tmp_path):
    fixtures = remote_code_fixtures()
    official = fixtures.internlm2_dir(tmp_path / "polar_official")
    refused = subprocess.run(
        [sys.executable, "-m", "polar_jax", "serve", "--model", str(official), "--port", "30999"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr.splitlines()[-1]

    server = start_server(official, "--trust-remote-code")
    tokenizer = AutoTokenizer.from_pretrained(str(official), trust_remote_code=True)
    enc = encoding.EncodingConfig(max_length=512, max_response_length=128)  # conftest's server flags
    rows = fixtures.ROWS
    expected = scoring.score_rows(hf.load_hf(official), tokenizer, rows, enc, progress=False)
    served = httpx.post(f"{server.url}/score", json={"rows": rows}, timeout=60).json()["rewards"]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    texts = [encoding.client_text(tokenizer, r["prompt"], r["reference"], r["output"], enc) for r in rows]
    pooled = httpx.post(f"{server.url}/pooling", json={"input": texts}, timeout=60).json()["data"]
    np.testing.assert_allclose([d["data"][-1][0] for d in pooled], expected, rtol=0, atol=1e-5)
    assert len(set(np.round(expected, 4))) == len(rows)  # distinct scores: a real comparison
