"""A bound on the bytes of uploads the server holds at once, across requests: each request takes its bytes as they
arrive (a declared Content-Length at once) and gives them back when it is answered; a request that would pass the
bound is refused (503, Retry-After) instead of growing the process. Used on the event loop only: no lock."""
from __future__ import annotations

from instyle.serve.refusals import Refused


class UploadBudget:
    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit, self.retry_after_s = limit, retry_after_s
        self.held = 0

    def hold(self) -> Holding:
        return Holding(self)


class Holding:
    """One request's share of the budget."""

    def __init__(self, budget: UploadBudget):
        self.budget, self.bytes = budget, 0

    def grow_to(self, size: int) -> None:
        """Hold `size` bytes in all (no change when already holding as many)."""
        more = size - self.bytes
        if more <= 0:
            return
        b = self.budget
        if b.held + more > b.limit:
            raise Refused(503, f"busy: uploads in progress hold {b.held} bytes; {more} more would pass the limit of "
                          f"{b.limit} bytes (--max-inflight-mb); retry shortly", cause="busy",
                          headers={"Retry-After": str(b.retry_after_s)})
        b.held += more
        self.bytes = size

    def release(self) -> None:
        self.budget.held -= self.bytes
        self.bytes = 0
