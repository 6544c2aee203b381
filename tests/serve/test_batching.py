"""The batcher and the bucket shapes in-process: each request gets its own rows' results in its own
order, a request that fits is scored in one batch in the smallest compiled shape, the queue limits
hold, and a cancelled (timed-out) request's rows are not scored."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from polar_jax.serve import scorer
from polar_jax.serve.batcher import Batcher, QueueFull, TooLarge
from polar_jax.serve.scorer import Bucket


def test_buckets_and_row_counts():
    buckets = scorer.make_buckets(max_tokens=300, max_batch_tokens=4096, row_multiple=2)
    assert buckets == (Bucket(64, 64), Bucket(32, 128), Bucket(16, 256), Bucket(8, 512))
    assert scorer.row_counts(Bucket(64, 64), 2) == (2, 8, 32, 64)
    assert scorer.row_counts(Bucket(8, 512), 2) == (2, 8)
    assert scorer.make_buckets(64, 16, row_multiple=4) == (Bucket(4, 64),)  # at least one multiple
    assert [scorer.bucket_index(buckets, n) for n in (1, 64, 65, 300)] == [0, 0, 1, 3]


class Recorder:
    """score_batch that returns each sequence's sum and records the batches (width, ids) it ran."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches, self.gate = [], gate

    def __call__(self, bucket, ids):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append((bucket.width, [len(x) for x in ids]))
        return np.array([x.sum() for x in ids], np.float32)


def seqs(rng, lengths):
    return [rng.integers(0, 100, n).astype(np.int32) for n in lengths]


def test_every_request_gets_its_own_results_in_order():
    buckets = scorer.make_buckets(256, 1024)
    gate = threading.Event()
    record = Recorder(gate)
    batcher = Batcher(record, buckets, max_queue_rows=1000)
    batcher.start()
    rng = np.random.default_rng(0)
    requests = [seqs(rng, rng.integers(1, 257, rng.integers(1, 9))) for _ in range(40)]
    futures = [batcher.submit(r) for r in requests]  # queued while the worker is held at the gate
    gate.set()
    for request, future in zip(requests, futures):
        np.testing.assert_array_equal(future.result(10), [x.sum() for x in request])
    batcher.close(10)
    assert sum(len(ids) for _, ids in record.batches) == sum(map(len, requests))
    for width, lengths in record.batches:
        assert lengths == sorted(lengths) and max(lengths) <= width  # sorted by length, within the width
        assert len(lengths) <= buckets[scorer.bucket_index(buckets, width)].rows


def test_a_request_that_fits_is_one_batch_in_the_smallest_shape():
    buckets = scorer.make_buckets(512, 4096)  # 64 rows x 64 ... 8 rows x 512
    served = scorer.ServeModel(None, None, None, 0, None, None, buckets, 512, "m", row_multiple=1)
    record = Recorder()
    shapes = []
    batcher = Batcher(
        record, buckets, 100, on_batch=lambda r: shapes.append((r.bucket, r.rows)), shape_for=served.shape_for
    )
    batcher.start()
    rng = np.random.default_rng(1)
    for lengths in ([10, 500, 70, 3], [200], [64] * 5):
        batcher.submit(seqs(rng, lengths)).result(10)
    batcher.close(10)
    assert [w for w, _ in record.batches] == [512, 256, 64]  # each request: its widest row's width, once
    assert shapes == [(Bucket(4, 512), 4), (Bucket(1, 256), 1), (Bucket(16, 64), 5)]


def test_queue_limits_and_cancelled_requests():
    gate = threading.Event()
    record = Recorder(gate)
    batcher = Batcher(record, scorer.make_buckets(64, 256), max_queue_rows=4)  # batches of up to 4 rows
    batcher.start()
    rng = np.random.default_rng(2)
    with pytest.raises(TooLarge, match="5 rows in one request"):
        batcher.submit(seqs(rng, [5] * 5))
    first = batcher.submit(seqs(rng, [3]))  # the worker takes it and waits at the gate
    while batcher.pending_rows:
        pass
    kept = batcher.submit(seqs(rng, [4, 4]))
    dropped = batcher.submit(seqs(rng, [7, 7]))
    with pytest.raises(QueueFull, match="4 rows queued"):
        batcher.submit(seqs(rng, [2]))
    assert dropped.cancel()  # as a timed-out request is cancelled
    gate.set()
    first.result(10), kept.result(10)
    batcher.close(10)
    assert [lengths for _, lengths in record.batches] == [[3], [4, 4]]  # the cancelled rows were never scored
