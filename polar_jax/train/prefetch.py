"""The next batches on their way to the device while the current step runs.

    with DevicePrefetch(train_iter, put=lambda b: setup.global_batch(b, shardings)) as batches:
        host_batch, device_batch = next(batches)

A background thread takes batches from the data iterator in order and puts each on the device
(`put`), up to `depth` ahead, so the step never waits for the host pipeline or the host-to-device
copy. Each step still gets the batch it would get without prefetching, and `get_state()` is the
iterator's state after the last batch handed out (what a checkpoint of that step must hold), not
after the batches fetched ahead: the thread records the state right after taking each batch.
An error of the iterator (or of `put`) is raised by the `next` that would have returned its batch.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_POLL_S = 0.1  # how often a blocked thread checks that it should stop


class DevicePrefetch:
    """Iterator of (host batch, device batch) over `iterator`, `depth` batches fetched ahead.

    Checkpointable as a Grain iterator is (`grain.checkpoint.CheckpointSave` calls `get_state`,
    which returns the JSON bytes of the underlying iterator's state after the last batch handed
    out); restore the underlying iterator before wrapping it."""

    def __init__(self, iterator: Iterator[dict], put: Callable[[dict], Any], depth: int = 2):
        self._iterator, self._put = iterator, put
        self._state = self._state_json()  # nothing handed out yet: the state as given
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="device-prefetch", daemon=True)
        self._thread.start()

    def _state_json(self) -> str:
        get_state = getattr(self._iterator, "get_state", None)
        return json.dumps(get_state(), indent=4) if get_state is not None else "null"

    def _fill(self) -> None:
        """The thread: batch, state after it, device copy, in order, until stopped or the iterator fails."""
        while not self._stop.is_set():
            try:
                host = next(self._iterator)
                item = (host, self._put(host), self._state_json())
            except BaseException as e:  # StopIteration included: handed to the consumer, in order
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> tuple[dict, Any]:
        """The next (host batch, device batch); raises what the iterator raised for it."""
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        host, device, self._state = item
        return host, device

    def get_state(self) -> bytes:
        """The underlying iterator's state after the last batch handed out (JSON bytes)."""
        return self._state.encode()

    def close(self) -> None:
        """Stop the thread (batches fetched ahead are dropped); safe to call twice."""
        self._stop.set()
        while True:  # unblock a thread waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> DevicePrefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
