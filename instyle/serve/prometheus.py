"""The server's Prometheus metrics, in a registry of their own (one per app, so several apps can live in one
process, as in the tests)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 -- re-exported for the route
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)


class Metrics:
    def __init__(self, queue_depth, upload_bytes_held=lambda: 0):
        disable_created_metrics()  # the *_created series only double the text; nothing here reads them
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("instyle_requests", "HTTP requests answered, by route and status code",
                                ("route", "code"), registry=r)
        self.errors = Counter("instyle_errors", "requests refused or failed, by cause",
                              ("cause",), registry=r)
        self.images = Counter("instyle_images", "images handed to the stylizer", registry=r)
        self.batch_size = Histogram("instyle_batch_size", "images per stylizer call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.latency = Histogram("instyle_request_latency_seconds", "POST /v1/stylize, body read to answer",
                                 buckets=LATENCY_BUCKETS, registry=r)
        depth = Gauge("instyle_queue_depth", "stylize requests waiting (queued or in the batch being run)",
                      registry=r)
        depth.set_function(queue_depth)
        held = Gauge("instyle_upload_bytes_held", "bytes of uploads held by requests in progress", registry=r)
        held.set_function(upload_bytes_held)

    def on_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def text(self) -> bytes:
        return generate_latest(self.registry)
