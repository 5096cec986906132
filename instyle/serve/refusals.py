"""Every refusal, the app's own and the framework's (404, 405, a multipart over its limits, a validation error),
answered in one shape, {"error": "one line"}, counted in instyle_errors_total{cause} and logged as one line.

Client faults log no traceback; only a fault of the server itself (an exception nothing expected) does, through
uvicorn. The client's data in a log line (a path, a file name in the message) is escaped: it cannot start a line
of its own.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from instyle.serve.text import log_text

log = logging.getLogger("instyle.serve")

CAUSES = {400: "bad_input", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "too_large",
          422: "bad_input", 499: "client_gone", 503: "busy", 504: "timeout"}


class Refused(Exception):
    """A request the server answers with `status` and {"error": message}; `cause` labels instyle_errors_total."""

    def __init__(self, status: int, message: str, *, cause: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.cause = cause or CAUSES.get(status, "bad_input" if status < 500 else "internal")


def install(app, metrics) -> None:
    """Register the handlers that turn every refusal into the one shape."""

    def answer(request, status: int, message: str, cause: str, headers=None) -> JSONResponse:
        metrics.errors.labels(cause).inc()
        log.info("%s %s -> %d %s: %s", request.method, log_text(request.url.path), status, cause, log_text(message))
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return answer(request, e.status, str(e), e.cause, e.headers)

    @app.exception_handler(HTTPException)
    async def framework(request, e: HTTPException):
        detail = e.detail if isinstance(e.detail, str) and e.detail else HTTPStatus(e.status_code).phrase
        if e.status_code in (404, 405):
            detail = f"{detail}: {request.method} {request.url.path}"
        return answer(request, e.status_code, detail, CAUSES.get(e.status_code, "bad_input"), e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = next(iter(e.errors()), {})
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(request, 422, f"{where}: {first.get('msg', 'invalid request')}", "bad_input")

    @app.exception_handler(Exception)
    async def fault(request, e: Exception):  # a bug of the server: uvicorn logs its traceback after this answer
        log.error("%s %s -> 500 internal: %s", request.method, log_text(request.url.path), type(e).__name__)
        metrics.errors.labels("internal").inc()
        return JSONResponse({"error": f"internal error ({type(e).__name__})"}, status_code=500)
