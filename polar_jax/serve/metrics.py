"""Prometheus metrics of `serve` (GET /metrics), in a registry of the server's own.

`polar_serve_compiles_after_warmup_total` counts XLA compilations after warm-up finished: with a
fixed set of bucket shapes it stays 0 however requests arrive (a test reads it).
"""

from __future__ import annotations

import jax
import prometheus_client as prom

from polar_jax.serve.batcher import BatchReport

ROW_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 rows
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


class Metrics:
    """The counters, gauges and histograms one server exports."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "polar_serve_requests", "HTTP requests by path and status", ("path", "status"), registry=r
        )
        self.latency = prom.Histogram(
            "polar_serve_request_seconds", "request latency by path", ("path",), buckets=LATENCY_BUCKETS, registry=r
        )
        self.rows = prom.Counter("polar_serve_rows", "rows scored", registry=r)
        self.batch_rows = prom.Histogram("polar_serve_batch_rows", "rows per batch", buckets=ROW_BUCKETS, registry=r)
        self.batch_seconds = prom.Histogram(
            "polar_serve_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.padded_fraction = prom.Summary(
            "polar_serve_batch_padding", "fraction of a batch's token slots that were padding", registry=r
        )
        self.queue_rows = prom.Gauge("polar_serve_queue_rows", "rows waiting to be scored", registry=r)
        self.compiles = prom.Counter("polar_serve_compiles", "XLA compilations in this process", registry=r)
        self.compiles_after_warmup = prom.Counter(
            "polar_serve_compiles_after_warmup", "XLA compilations after warm-up finished", registry=r
        )
        self.ready = prom.Gauge("polar_serve_ready", "1 once warm-up has compiled every bucket", registry=r)
        self.warm = False

    def mark_ready(self) -> None:
        """Warm-up finished: compilations from now on count as after warm-up."""
        self.warm = True
        self.ready.set(1)

    def observe_batch(self, report: BatchReport) -> None:
        """Record one forward pass."""
        self.rows.inc(report.rows)
        self.batch_rows.observe(report.rows)
        self.batch_seconds.observe(report.seconds)
        self.padded_fraction.observe(1 - report.tokens / (report.bucket.rows * report.bucket.width))

    def watch_compiles(self) -> None:
        """Count XLA backend compilations (jax.monitoring); `stop_watching_compiles` undoes it."""
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def stop_watching_compiles(self) -> None:
        """Remove the compile listener."""
        jax.monitoring.unregister_event_duration_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            self.compiles.inc()
            if self.warm:
                self.compiles_after_warmup.inc()

    def exposition(self) -> bytes:
        """The text format GET /metrics returns."""
        return prom.generate_latest(self.registry)
