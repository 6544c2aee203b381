"""Dynamic batching for `serve`: one queue across every connection, one worker thread on the model.

A request's rows wait in the queue of their `Bucket` (the narrowest that holds them). The worker
takes the oldest waiting row's request and the widest bucket that request still has rows in, fills
a batch with that bucket's rows in arrival order, then fills the slots its compiled shape leaves free
(`shape_for`: they would compute padding) with rows of narrower buckets, sorts the batch by length
and scores it; a request's future resolves once all its rows are scored, in
its own order. Every batch has a bucket's shape, so nothing compiles after `warm_up`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from polar_jax.serve.scorer import Bucket, bucket_index

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue_rows` rows already (HTTP 503, retry later)."""


class TooLarge(Exception):
    """One request has more rows than the whole queue may hold (HTTP 413)."""


@dataclasses.dataclass(eq=False)
class _Request:
    ids: list[np.ndarray]
    future: concurrent.futures.Future
    scores: np.ndarray
    left: int
    widest: int  # the widest bucket any of its rows needs


@dataclasses.dataclass(frozen=True)
class BatchReport:
    """What one forward pass did (for the metrics)."""

    bucket: Bucket
    rows: int
    tokens: int  # real tokens (the rest of the shape's rows x width is padding)
    seconds: float


class Batcher:
    """The queue and its worker: `submit(ids)` returns a future of float32 rewards [len(ids)]."""

    def __init__(
        self,
        score_batch: Callable[[Bucket, list[np.ndarray]], np.ndarray],
        buckets: tuple[Bucket, ...],
        max_queue_rows: int,
        warm_up: Callable[[], None] | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        shape_for: Callable[[Bucket, int], Bucket] = lambda bucket, n: bucket,
    ):
        """`score_batch(bucket, ids)` runs one batch; `shape_for(bucket, n)` names the shape it ran in
        (for the reports); `warm_up` runs on the worker before anything is served."""
        self._score_batch, self._buckets, self.max_queue_rows = score_batch, buckets, max_queue_rows
        self._warm_up, self._on_batch, self._shape_for = warm_up, on_batch or (lambda report: None), shape_for
        self._waiting = [collections.deque() for _ in buckets]  # per bucket: (arrival, request, row)
        self._arrival = itertools.count()
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self.ready = threading.Event()  # set once warm-up has compiled every bucket
        self.error: BaseException | None = None  # why warm-up failed (then nothing is served)
        self._thread = threading.Thread(target=self._run, name="polar-serve-batcher", daemon=True)

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be scored."""
        return self._pending

    def start(self) -> None:
        """Start the worker: it warms up first, then serves the queue."""
        self._thread.start()

    def submit(self, ids: list[np.ndarray]) -> concurrent.futures.Future:
        """Queue one request's sequences; raises `QueueFull` or `TooLarge` instead of waiting."""
        future = concurrent.futures.Future()
        if not ids:
            future.set_result(np.zeros(0, np.float32))
            return future
        if len(ids) > self.max_queue_rows:
            raise TooLarge(
                f"{len(ids)} rows in one request; the queue holds at most {self.max_queue_rows} (--max-queue)"
            )
        where = [bucket_index(self._buckets, len(x)) for x in ids]
        request = _Request(ids, future, np.zeros(len(ids), np.float32), len(ids), max(where))
        with self._cond:
            if self.error is not None:
                raise RuntimeError(f"the server could not warm up: {self.error}")
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._pending + len(ids) > self.max_queue_rows:
                raise QueueFull(f"{self._pending} rows queued; the queue holds {self.max_queue_rows} (--max-queue)")
            for row, i in enumerate(where):
                self._waiting[i].append((next(self._arrival), request, row))
            self._pending += len(ids)
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            if self._warm_up is not None:
                self._warm_up()
        except Exception as e:  # noqa: BLE001 - reported by /health and every request, not a silent hang
            log.exception("warm-up failed")
            self.error = e
            with self._cond:
                for queue in self._waiting:
                    for _, request, _ in queue:
                        _resolve(request.future, exception=e)
                    queue.clear()
                self._pending = 0
            return
        self.ready.set()
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, and nothing left
                bucket, batch = self._take()
            if batch:
                self._score(bucket, batch)

    def _take(self) -> tuple[Bucket, list[tuple[_Request, int]]]:
        """The next batch (under the lock): the rows of the widest bucket the oldest row's request has
        rows in, then narrower rows in the slots the batch's compiled shape leaves free."""
        for queue in self._waiting:  # cancelled requests (timed out) leave the queue
            while queue and queue[0][1].future.cancelled():
                queue.popleft()
                self._pending -= 1
        heads = [(q[0][0], i) for i, q in enumerate(self._waiting) if q]
        if not heads:
            return self._buckets[0], []
        oldest = self._waiting[min(heads)[1]][0][1]
        first = oldest.widest
        while not any(request is oldest for _, request, _ in self._waiting[first]):
            first -= 1  # its widest rows were scored already
        bucket, batch = self._buckets[first], []
        self._pop_into(batch, self._waiting[first], bucket.rows)
        free_up_to = self._shape_for(bucket, max(len(batch), 1)).rows  # slots that would be padding
        for i in range(first - 1, -1, -1):
            self._pop_into(batch, self._waiting[i], free_up_to)
        return bucket, batch

    def _pop_into(self, batch: list, queue: collections.deque, limit: int) -> None:
        """Move rows from the front of `queue` into `batch` until it holds `limit` (cancelled: dropped)."""
        while queue and len(batch) < limit:
            _, request, row = queue.popleft()
            self._pending -= 1
            if not request.future.cancelled():
                batch.append((request, row))

    def _score(self, bucket: Bucket, batch: list[tuple[_Request, int]]) -> None:
        batch.sort(key=lambda item: len(item[0].ids[item[1]]))
        ids = [request.ids[row] for request, row in batch]
        start = time.perf_counter()
        try:
            scores = self._score_batch(bucket, ids)
        except Exception as e:  # noqa: BLE001 - the requests fail (HTTP 500), the server keeps serving
            log.exception("scoring a batch of %d rows (bucket %s) failed", len(batch), bucket)
            for request in {request for request, _ in batch}:
                _resolve(request.future, exception=e)
            return
        shape = self._shape_for(bucket, len(batch))
        self._on_batch(BatchReport(shape, len(batch), sum(map(len, ids)), time.perf_counter() - start))
        for (request, row), score in zip(batch, scores):
            request.scores[row] = score
            request.left -= 1
            if request.left == 0:
                _resolve(request.future, result=request.scores)


def _resolve(future: concurrent.futures.Future, result=None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless its request was cancelled meanwhile (a timeout)."""
    if future.cancelled():
        return
    try:
        future.set_exception(exception) if exception is not None else future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled between the check and the set
        pass
