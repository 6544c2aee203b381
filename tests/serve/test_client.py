"""`polar_jax.serve.client.RewardClient`: its retry policy on a mock transport (which statuses are
retried, Retry-After honoured, chunking and order), then against the real server: scores equal
offline `score_rows`, a 400 is not retried (counted in /metrics), a client started before the
server retries until it is up, 503s under a tiny --max-queue are retried, the API key is sent."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polar_jax import scoring
from polar_jax.data import encoding
from polar_jax.io import models, tokenizers
from polar_jax.serve import client as client_lib
from polar_jax.serve.client import RewardClient, ServerError

# ------------------------------------------------------------------------------ a mock server


class Script:
    """A mock transport answering /score from a list of (status, body, headers); the last repeats.
    A status of None raises a connection error. `requests` records each request's rows."""

    def __init__(self, *answers):
        self.answers, self.requests, self.lock = list(answers), [], threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            body = json.loads(request.content) if request.content else None
            self.requests.append((request.url.path, request.headers.get("authorization"), body))
            status, out, headers = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if status is None:
            raise httpx.ConnectError("connection refused", request=request)
        if out == "echo":  # each row's reward is its "output" as a number
            out = {"rewards": [float(r["output"]) for r in body["rows"]]}
        return httpx.Response(status, json=out, headers=headers or {})


@pytest.fixture
def sleeps(monkeypatch):
    """The client's backoff sleeps, recorded instead of slept."""
    slept = []
    monkeypatch.setattr(client_lib.time, "sleep", slept.append)
    return slept


def mock_client(script: Script, **kwargs) -> RewardClient:
    return RewardClient("http://mock:1", transport=httpx.MockTransport(script), **kwargs)


def error(status: int, message: str) -> tuple:
    return status, {"object": "error", "message": message, "code": status}, None


ROWS = [{"prompt": "p", "reference": "r", "output": str(i)} for i in range(10)]


def test_retried_statuses_back_off_and_honour_retry_after(sleeps):
    script = Script(
        (None, None, None),
        error(500, "boom"),
        error(502, "bad gateway"),
        (503, {"message": "queue full"}, {"Retry-After": "3"}),
        error(504, "late"),
        (200, "echo", None),
    )
    with mock_client(script, backoff=0.5, max_backoff=1.5, api_key="k") as c:
        got = c.score(ROWS[:3])
    np.testing.assert_array_equal(got, np.float32([0, 1, 2]))
    assert got.dtype == np.float32
    assert sleeps == [0.5, 1.0, 1.5, 3.0, 1.5]  # backoff 0.5 x 2^i capped at 1.5; the 503 waits its Retry-After
    assert len(script.requests) == 6 and all(auth == "Bearer k" for _, auth, _ in script.requests)


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_client_errors_raise_at_once_with_the_servers_message(sleeps, status):
    script = Script(error(status, f"rows[0].prompt: bad {status}"), (200, "echo", None))
    with mock_client(script) as c, pytest.raises(ServerError, match=f"HTTP {status}: rows\\[0\\].prompt: bad") as e:
        c.score(ROWS[:1])
    assert (e.value.status, e.value.server_message) == (status, f"rows[0].prompt: bad {status}")
    assert len(script.requests) == 1 and sleeps == []


def test_gives_up_after_retries(sleeps):
    script = Script((None, None, None))
    with mock_client(script, retries=3, backoff=1.0) as c, pytest.raises(ServerError, match="no answer after 4") as e:
        c.score(ROWS[:1])
    assert e.value.status is None and "is the server running" in str(e.value)
    assert len(script.requests) == 4 and sleeps == [1.0, 2.0, 4.0]
    script = Script(error(503, "still full"))
    with mock_client(script, retries=2) as c, pytest.raises(ServerError, match="HTTP 503 after 3 attempts") as e:
        c.score(ROWS[:1])
    assert e.value.status == 503


@pytest.mark.parametrize("concurrency", [1, 4])
def test_rows_go_in_chunks_and_come_back_in_order(concurrency):
    script = Script((200, "echo", None))
    with mock_client(script, max_rows_per_request=3, concurrency=concurrency) as c:
        got = c.score(ROWS)
        assert c.score([]).shape == (0,)
    np.testing.assert_array_equal(got, np.arange(10, dtype=np.float32))
    assert sorted(len(body["rows"]) for _, _, body in script.requests) == [1, 3, 3, 3]


def test_classify_reads_the_embeddings():
    script = Script((200, [{"index": 0, "embedding": [1.5]}, {"index": 1, "embedding": [-2.0]}], None))
    with mock_client(script) as c:
        assert c.classify(["a[UNUSED_TOKEN_130]", "b[UNUSED_TOKEN_130]"], model="m") == [1.5, -2.0]
    texts = ["a[UNUSED_TOKEN_130]", "b[UNUSED_TOKEN_130]"]
    assert script.requests[0] == ("/classify", None, {"text": texts, "model": "m"})


# ------------------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def offline(rm_dir, shared_server):
    """(rows, offline rewards) of the fixture's rows, encoded as the servers encode them (conftest's
    --max-length, which /v1/models reports, and a quarter of it as --max-response-length)."""
    model_dir = rm_dir[0]
    rows = [json.loads(line) for line in (model_dir / "rows.jsonl").read_text().splitlines()]
    rows = rows * 4  # 20 rows: several chunks
    max_length = httpx.get(f"{shared_server.url}/v1/models").json()["data"][0]["max_model_len"]
    enc = encoding.EncodingConfig(max_length=max_length, max_response_length=max_length // 4)
    model, tokenizer = models.load_model(str(model_dir), dtype="float32"), tokenizers.load_tokenizer(str(model_dir))
    return rows, scoring.score_rows(model, tokenizer, rows, enc, progress=False)


def request_counts(url: str) -> dict[tuple[str, str], float]:
    """polar_serve_requests_total by (path, status), from GET /metrics."""
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "polar_serve_requests_total":
                counts[s.labels["path"], s.labels["status"]] = s.value
    return counts


def test_scores_equal_offline_and_bad_rows_are_not_retried(shared_server, offline):
    rows, want = offline
    with RewardClient(shared_server.url, max_rows_per_request=3) as c:
        assert c.health()
        c.wait_ready(5)
        np.testing.assert_allclose(c.score(rows), want, atol=1e-5, rtol=0)
        before = request_counts(shared_server.url).get(("/score", "400"), 0)
        c.backoff = 30.0  # a retry would show as a 30 s sleep
        start = time.monotonic()
        with pytest.raises(ServerError, match=r"HTTP 400: rows\[1\]") as e:
            c.score([rows[0], {"prompt": "no reference"}])
        assert time.monotonic() - start < 10 and e.value.status == 400
    assert request_counts(shared_server.url).get(("/score", "400"), 0) == before + 1


def test_retries_until_up_and_under_load_with_the_api_key(rm_dir, start_server, offline):
    rows, want = offline
    server = start_server(rm_dir[0], "--api-key", "s3cret", "--max-queue", "2", "--dtype", "float32", ready=False)
    with RewardClient(server.url, api_key="s3cret", retries=60, max_backoff=2.0, max_rows_per_request=2) as c:
        assert not c.health()  # not even listening yet: the first requests are refused and retried
        np.testing.assert_allclose(c.score(rows[:2]), want[:2], atol=1e-5, rtol=0)
        assert c.health()
        c.concurrency = 10  # 10 requests of 2 rows at once into a queue of 2 rows: some get 503 and retry
        for _ in range(5):
            np.testing.assert_allclose(c.score(rows), want, atol=1e-5, rtol=0)
            counts = request_counts(server.url)
            if counts.get(("/score", "503"), 0):
                break
        assert counts.get(("/score", "503"), 0) > 0
        assert counts[("/score", "200")] >= 1 + len(rows) // 2
    with RewardClient(server.url, backoff=30.0) as keyless, pytest.raises(ServerError, match="HTTP 401") as e:
        keyless.score(rows[:1])
    assert "Authorization: Bearer" in e.value.server_message
    assert request_counts(server.url).get(("/score", "401"), 0) == 1
