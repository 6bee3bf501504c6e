"""Prometheus metrics of one server instance (its own registry, so several apps can coexist)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """Requests, latency, micro-batch sizes, queue depth and errors, in the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "guardtune_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "guardtune_request_latency_seconds",
            "Time from request received to response sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "guardtune_errors",
            "Responses with a 4xx or 5xx status, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "guardtune_batch_size",
            "Texts scored together in one micro-batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_guards = Histogram(
            "guardtune_batch_guards",
            "Distinct guards served by one micro-batch.",
            buckets=(1, 2, 4, 8),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "guardtune_queue_depth", "Jobs waiting for the model worker.", registry=self.registry
        )
        self.rejected = Counter(
            "guardtune_queue_rejections",
            "Requests refused with 503 because the queue was full.",
            registry=self.registry,
        )

        self.batch_retries = Counter(
            "guardtune_batch_retries",
            "Micro-batches that raised and were scored again one request at a time.",
            registry=self.registry,
        )

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` whenever metrics are scraped."""
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
