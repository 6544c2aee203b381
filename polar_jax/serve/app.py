"""The FastAPI application of `serve`: routes, authentication, limits and errors.

Every scoring route does the same three things: check and tokenise its items (400 naming the
field and index of the first bad one), queue them on the one `Batcher` (503 with Retry-After when
the queue is full, 413 when one request is larger than the queue), and wait for the rewards
(504 past `request_timeout`). `/health` answers 503 until warm-up has compiled every bucket;
`/health` and `/metrics` need no key, every other route does when `api_key` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import time
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from polar_jax.serve import protocols
from polar_jax.serve.batcher import Batcher, QueueFull, TooLarge
from polar_jax.serve.metrics import Metrics
from polar_jax.serve.scorer import BadInput, ServeModel


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `serve`'s flags set besides the model."""

    api: str = "vllm"  # what /pooling speaks: protocols.APIS
    api_key: str | None = None
    max_queue_rows: int = 4096
    request_timeout: float = 60.0  # seconds from arrival to response
    max_body_bytes: int = 64 * 2**20
    retry_after: int = 1  # seconds, in 503 responses


class ServeError(Exception):
    """An HTTP error with vLLM's error body (`protocols.error_body`)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(protocols.error_body(status, message), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a body longer than `max_bytes` (declared or streamed) gets 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(declared))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # an HTTPException: FastAPI turns any other error while reading the body into a 400
                raise HTTPException(413, self._message(seen))
            return message

        try:
            await self.app(scope, counted, send)
        except HTTPException:  # raised outside a route's body parsing (no handler answered it)
            if seen <= self.max_bytes:
                raise
            await self._refuse(scope, receive, send, seen)

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (--max-body-bytes)"

    async def _refuse(self, scope, receive, send, size: int, message: str | None = None):
        await _error(413, message or self._message(size))(scope, receive, send)


def create_app(served: ServeModel, settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """The server's application; its lifespan starts the batcher (warm-up first) and drains it on exit."""
    metrics = metrics or Metrics()
    batcher = Batcher(
        served.score_batch,
        served.buckets,
        settings.max_queue_rows,
        warm_up=lambda: (served.warm_up(), metrics.mark_ready()),
        on_batch=metrics.observe_batch,
        shape_for=served.shape_for,
    )
    metrics.queue_rows.set_function(lambda: batcher.pending_rows)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.watch_compiles()
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)
            metrics.stop_watching_compiles()

    app = FastAPI(title="polar_jax reward server", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.served = batcher, metrics, served
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _add_error_handlers(app)
    _add_request_metrics(app, metrics)
    _add_routes(app, served, settings, batcher, metrics)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        return _error(400, protocols.validation_message(e.errors()))

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))


def _add_request_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response


def _key_check(api_key: str | None) -> Callable:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not (token and hmac.compare_digest(token.encode(), api_key.encode())):
            raise ServeError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY' (--api-key)",
                {"WWW-Authenticate": "Bearer"},
            )

    return check


def _add_routes(app: FastAPI, served: ServeModel, settings: Settings, batcher: Batcher, metrics: Metrics) -> None:
    keyed = [Depends(_key_check(settings.api_key))]

    async def rewards(make_ids: Callable, items: list, field: str) -> tuple[list[float], list[int]]:
        deadline = time.monotonic() + settings.request_timeout
        try:
            ids = await run_in_threadpool(make_ids, items, field)
            future = batcher.submit(ids)
        except BadInput as e:
            raise ServeError(400, str(e)) from None
        except TooLarge as e:
            raise ServeError(413, str(e)) from None
        except QueueFull as e:
            raise ServeError(503, f"{e}; retry later", {"Retry-After": str(settings.retry_after)}) from None
        except RuntimeError as e:  # warm-up failed
            raise ServeError(500, str(e)) from None
        try:
            scores = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            raise ServeError(504, f"not scored within {settings.request_timeout} s (--request-timeout)") from None
        return [float(s) for s in scores], [len(x) for x in ids]

    @app.post("/classify", dependencies=keyed)
    async def classify(body: protocols.ClassifyRequest):
        scores, lengths = await rewards(served.text_ids, body.text, "text")
        return protocols.classify_response(scores, lengths)

    @app.post("/pooling", dependencies=keyed)
    async def pooling(body: protocols.PoolingRequest):
        scores, lengths = await rewards(served.text_ids, body.input, "input")
        return protocols.pooling_response(settings.api, served.name, scores, lengths)

    @app.post("/get_reward", dependencies=keyed)
    async def get_reward(body: protocols.GetRewardRequest):
        scores, _ = await rewards(served.text_ids, body.query, "query")
        return protocols.get_reward_response(scores)

    @app.post("/score", dependencies=keyed)
    async def score(body: protocols.ScoreRequest):
        scores, _ = await rewards(served.row_ids, body.rows, "rows")
        return {"rewards": scores}

    @app.get("/v1/models", dependencies=keyed)
    async def list_models():
        return protocols.models_response(served.name, served.max_tokens)

    @app.get("/health")
    async def health():
        if batcher.error is not None:
            return _error(500, f"warm-up failed: {batcher.error}")
        if not batcher.ready.is_set():
            return _error(503, "warming up: compiling the bucket shapes", {"Retry-After": str(settings.retry_after)})
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")
