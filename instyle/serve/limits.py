"""The server's limits and their defaults, in one place: the app keeps them, `instyle serve` offers each as a flag
with this default (serve_cli.py). No FastAPI here: `instyle --help` reads the defaults without the serve extra."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_pixels: int = 1 << 24
    max_upload_mb: float = 25.0
    max_inflight_mb: float = 256.0  # bytes of uploads held at once, across requests
    queue: int = 64
    timeout_s: float = 60.0
    body_timeout_s: float = 30.0  # from the headers to the body's last byte
    shutdown_timeout_s: float = 10.0  # graceful shutdown: then connections still open are closed
    keep_alive_s: float = 5.0
    retry_after_s: int = 1

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 1024 * 1024)
