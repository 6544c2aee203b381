"""The server's life: /health is 503 while warm-up compiles, SIGTERM under load finishes every accepted
request and exits 0, and the socket listens on 127.0.0.1 only."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import pathlib
import signal
import socket
import threading
import time

import httpx
import pytest

TOKEN = "[UNUSED_TOKEN_130]"
ATOL = 1e-5


def reference(rm_dir) -> tuple[list[str], list[float]]:
    """The fixture's client-built texts and transformers' scores of them."""
    rows = rm_dir[1]["rows"]
    return [r["text"] for r in rows], [r["score"] for r in rows]


def classify(url: str, texts: list[str], timeout: float = 120.0, **kwargs) -> list[float]:
    """POST /classify; the scores of a 200 response."""
    response = httpx.post(url + "/classify", json={"text": texts}, timeout=timeout, **kwargs)
    assert response.status_code == 200, response.text
    return [item["embedding"][0] for item in response.json()]


def test_health_is_503_until_warm_up_has_compiled(start_server, rm_dir):
    # widths 64, 96, ... 2048: eleven widths at their row counts to compile (a request's wait counts warm-up)
    flags = ("--max-length", "2048", "--max-response-length", "512", "--request-timeout", "600")
    server = start_server(rm_dir[0], *flags, ready=False)
    texts, want = reference(rm_dir)
    statuses, early = [], None
    end = time.monotonic() + 180
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        while time.monotonic() < end and server.process.poll() is None:
            try:
                response = httpx.get(server.url + "/health", timeout=5)
            except httpx.TransportError:  # still loading the model: nothing listens yet
                time.sleep(0.01)
                continue
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
            assert "warming up" in response.json()["message"] and int(response.headers["retry-after"]) >= 1
            if early is None:  # a request during warm-up waits for it, then gets its scores
                early = pool.submit(classify, server.url, texts[::-1])
            time.sleep(0.01)
        assert statuses and statuses[-1] == 200, server.output()[-3000:]
        assert statuses[0] == 503, "warm-up finished before the first /health answer: 503 not observed"
        assert early is not None and early.result() == pytest.approx(want[::-1], abs=ATOL)
    assert classify(server.url, texts) == pytest.approx(want, abs=ATOL)


def _long_texts(n: int) -> list[str]:
    """`n` different client-built texts of ~480 tokens (the server's widest bucket)."""
    return [f"row {j}: " + "word " * (440 + j % 7 * 5) + TOKEN for j in range(n)]


def _body_then(event: threading.Event, body: bytes):
    """The request body as a stream that sets `event` once the last byte is handed to the socket."""
    yield body
    event.set()


def test_sigterm_under_load_finishes_accepted_requests_and_exits_0(start_server, rm_dir):
    server = start_server(rm_dir[0])
    texts, want = reference(rm_dir)
    long = _long_texts(8)
    long_want = classify(server.url, long)
    n = 16  # requests of the 5 fixture texts (rotated) and 16 long ones: ~5 s of work on 2 CPU cores
    orders = [[(i + k) % 5 for k in range(5)] for i in range(n)]
    sent = [threading.Event() for _ in range(n)]
    finished = [0.0] * n

    def one(i: int) -> list[float]:
        items = [texts[j] for j in orders[i]] + [long[(i + j) % 8] for j in range(16)]
        body = json.dumps({"text": items}).encode()
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        response = httpx.post(server.url + "/classify", content=_body_then(sent[i], body), headers=headers, timeout=300)
        finished[i] = time.monotonic()
        assert response.status_code == 200, response.text
        return [item["embedding"][0] for item in response.json()]

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        assert all(event.wait(60) for event in sent)
        time.sleep(0.5)  # every request is read by the server: accepted
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        assert server.process.poll() is None  # still finishing the accepted requests (~5 s of work here)
        with pytest.raises(httpx.ConnectError):  # the listening socket is closed at once
            httpx.get(server.url + "/health", timeout=5)
        results = [f.result() for f in futures]
    assert server.process.wait(120) == 0, server.output()[-3000:]
    for i, scores in enumerate(results):
        assert scores[:5] == pytest.approx([want[j] for j in orders[i]], abs=ATOL)
        assert scores[5:] == pytest.approx([long_want[(i + j) % 8] for j in range(16)], abs=ATOL)
    assert sum(t > signalled for t in finished) >= 1, "no request was still in flight at SIGTERM"
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets in LISTEN state on `port` (Linux /proc/net)."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = pathlib.Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
            found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def test_binds_127_0_0_1_by_default(shared_server):
    if not pathlib.Path("/proc/net/tcp").exists():
        pytest.skip("reads the listening sockets from Linux's /proc/net/tcp")
    assert _listening_addresses(shared_server.port) == {"127.0.0.1"}
    assert httpx.get(shared_server.url + "/health", timeout=10).status_code == 200
    # another loopback address of this machine (Linux routes 127/8 to lo): nothing listens there
    with contextlib.closing(socket.socket()) as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(5)
        s.connect(("127.0.0.2", shared_server.port))
