"""The batcher and the bucket shapes in-process: each request gets its own rows' results in its own
order, a batch runs in the smallest compiled shape and narrower rows fill only the slots it leaves
free, the queue limits hold, and a cancelled (timed-out) request's rows are not scored."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from polar_jax.serve import scorer
from polar_jax.serve.batcher import Batcher, QueueFull, TooLarge
from polar_jax.serve.scorer import Bucket


def test_buckets_and_row_counts():
    buckets = scorer.make_buckets(max_tokens=300, max_batch_tokens=4096, row_multiple=2)
    assert buckets == (
        Bucket(64, 64),
        Bucket(42, 96),
        Bucket(32, 128),
        Bucket(20, 192),
        Bucket(16, 256),
        Bucket(10, 384),
    )
    assert scorer.row_counts(Bucket(64, 64), 2) == (2, 8, 32, 64)
    assert scorer.row_counts(Bucket(8, 512), 2) == (2, 8)
    assert scorer.make_buckets(64, 16, row_multiple=4) == (Bucket(4, 64),)  # at least one multiple
    assert [scorer.bucket_index(buckets, n) for n in (1, 64, 65, 97, 300)] == [0, 0, 1, 2, 5]


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


def test_batches_take_the_smallest_shape_and_narrower_rows_only_fill_its_free_slots():
    buckets = scorer.make_buckets(512, 4096)  # 64 rows x 64 ... 8 rows x 512
    served = scorer.ServeModel(None, None, None, 0, None, None, buckets, 512, "m", row_multiple=1)
    record = Recorder()
    shapes = []
    batcher = Batcher(
        record, buckets, 100, on_batch=lambda r: shapes.append((r.bucket, r.rows)), shape_for=served.shape_for
    )
    batcher.start()
    rng = np.random.default_rng(1)
    for lengths in ([500, 10, 500], [200], [64] * 5, [300, 70, 3]):
        batcher.submit(seqs(rng, lengths)).result(10)
    batcher.close(10)
    # [500, 10, 500]: two 512-rows compile as 4 rows, the 10 fills a free slot: one pass
    # [300, 70, 3]: one 384-row is shape 1 x 384, no free slot: the 70 (width 96) and the 3 (64) follow
    assert record.batches == [(512, [10, 500, 500]), (256, [200]), (64, [64] * 5), (384, [300]), (96, [70]), (64, [3])]
    assert shapes == [
        (Bucket(4, 512), 3), (Bucket(1, 256), 1), (Bucket(16, 64), 5), (Bucket(1, 384), 1), (Bucket(1, 96), 1),
        (Bucket(1, 64), 1),
    ]  # fmt: skip


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
