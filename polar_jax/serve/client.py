"""A client of `serve` (and of any server speaking sglang's /classify): pooled connections, timeouts,
retries with exponential backoff, large row lists sent in chunks.

    with RewardClient("http://127.0.0.1:30000") as client:
        client.wait_ready(300)
        rewards = client.score([{"prompt": ..., "reference": ..., "output": ...}])  # float32 [N]

What is retried (up to `retries` times, waiting `backoff` x 2^attempt seconds, at most
`max_backoff`): connection errors and timeouts, 503 (waiting its Retry-After when it sends one),
500, 502 and 504. Any other error status (400 bad input, 401 key, 413 too large, ...) raises
`ServerError` at once, with the server's message: sending the same request again cannot help.
Scoring is a pure function of the rows, so a retried request cannot count twice.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np

RETRIED_STATUSES = frozenset({500, 502, 503, 504})


class ServerError(Exception):
    """A request the server refused or could not answer: `status` (None: no answer at all) and
    the server's `message`."""

    def __init__(self, message: str, status: int | None = None, server_message: str = ""):
        super().__init__(message)
        self.status, self.server_message = status, server_message


class RewardClient:
    """A reward server at `url`: `score(rows)`, `classify(texts)`, `health()`, `wait_ready(timeout)`.

    One pooled `httpx.Client` (thread-safe) serves every call; use it as a context manager or call
    `close()`. `api_key` is sent as `Authorization: Bearer KEY`; `timeout` bounds each attempt
    (seconds); rows go `max_rows_per_request` per request, up to `concurrency` requests at once.
    `transport` replaces the network (an `httpx.MockTransport` in tests)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        max_rows_per_request: int = 256,
        concurrency: int = 4,
        transport: httpx.BaseTransport | None = None,
    ):
        if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ValueError(f"retries={retries}, backoff={backoff}, max_backoff={max_backoff}, timeout={timeout}")
        if max_rows_per_request < 1 or concurrency < 1:
            raise ValueError(f"max_rows_per_request={max_rows_per_request}, concurrency={concurrency}: both >= 1")
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.max_rows_per_request, self.concurrency = max_rows_per_request, concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max(8, concurrency), max_keepalive_connections=max(8, concurrency))
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, limits=limits, transport=transport
        )

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    # ------------------------------------------------------------------------------ requests

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry `attempt` (0-based): the 503's Retry-After if it sent one, else backoff."""
        if response is not None and response.status_code == 503:
            try:
                return max(0.0, float(response.headers.get("retry-after", "")))
            except ValueError:
                pass
        return min(self.max_backoff, self.backoff * 2**attempt)

    def request(self, method: str, path: str, body=None) -> httpx.Response:
        """One call with the retry policy (module docstring); the 2xx response, or `ServerError`."""
        last = ""
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = self._http.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:  # refused, reset, timed out
                last = f"{type(e).__name__}: {e}"
                status = None
            else:
                if response.is_success:
                    return response
                status, last = response.status_code, _message(response)
                if status not in RETRIED_STATUSES:
                    raise ServerError(f"{method} {self.url}{path}: HTTP {status}: {last}", status, last)
            if attempt < self.retries:
                time.sleep(self._delay(attempt, response))
        where = f"HTTP {status}" if status else "no answer"
        raise ServerError(
            f"{method} {self.url}{path}: {where} after {self.retries + 1} attempts: {last}"
            + ("" if status else "; is the server running (python -m polar_jax serve) at that address?"),
            status,
            last,
        )

    # ------------------------------------------------------------------------------ the API

    def score(self, rows: list[dict]) -> np.ndarray:
        """float32 [len(rows)]: POST /score {"rows": chunk} per `max_rows_per_request` rows
        (`concurrency` chunks in flight), the rewards in the rows' order."""
        rows = list(rows)
        n = self.max_rows_per_request
        chunks = [rows[i : i + n] for i in range(0, len(rows), n)]
        if not chunks:
            return np.zeros(0, np.float32)

        def one(chunk: list[dict]) -> list[float]:
            rewards = self.request("POST", "/score", {"rows": chunk}).json()["rewards"]
            if len(rewards) != len(chunk):
                raise ServerError(f"POST {self.url}/score: {len(rewards)} rewards for {len(chunk)} rows")
            return rewards

        if len(chunks) == 1 or self.concurrency == 1:
            parts = [one(c) for c in chunks]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(chunks))) as pool:
                parts = list(pool.map(one, chunks))
        return np.asarray([r for part in parts for r in part], np.float32)

    def classify(self, texts: list[str], model: str | None = None) -> list[float]:
        """sglang's POST /classify {"model", "text": texts}: each text's `embedding[0]` (texts built by
        the official client's encode, ending in the reward token)."""
        body = {"text": list(texts), **({"model": model} if model else {})}
        return [float(item["embedding"][0]) for item in self.request("POST", "/classify", body).json()]

    def health(self) -> bool:
        """True when GET /health answers 200 now (warm-up done); no retries."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.2) -> None:
        """Poll GET /health until it answers 200; raise `ServerError` at once when the server says its
        warm-up failed (500), `TimeoutError` when `timeout` seconds pass first."""
        end, last = time.monotonic() + timeout, "no answer"
        while True:
            try:
                response = self._http.get("/health")
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {_message(response)}"
                if response.status_code == 500:
                    raise ServerError(f"GET {self.url}/health: {last}", 500, _message(response))
            if time.monotonic() + poll > end:
                raise TimeoutError(
                    f"{self.url} not ready within {timeout} s (last: {last}); start it with "
                    f"`python -m polar_jax serve --model DIR --port PORT` or check its log"
                )
            time.sleep(poll)


def _message(response: httpx.Response) -> str:
    """The error body's "message" (vLLM's error shape), else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return response.text[:500]
