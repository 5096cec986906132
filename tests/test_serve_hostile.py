"""`instyle serve` against hostile clients, on loopback: whatever a client sends stays data (file names in any
script or with line breaks reach the warnings header percent-encoded, never another request's), stalled and cut
uploads are timed out or dropped with one log line and no traceback, abandoned requests are never stylized, the
bytes of uploads held at once are bounded, shutdown is bounded, and every refusal, the framework's own
included, is {"error": ...} and counted."""
from __future__ import annotations

import contextlib
import http.client
import io as stdio
import json
import logging
import re
import socket
import threading
import time
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_live import Gate, running_server  # noqa: E402

ZOO = dict(backend="eager", precision="fp32", device="cpu", report=False)


@pytest.fixture(scope="module")
def stylizer(model_path):
    import instyle

    return Gate(instyle.load(str(model_path), **ZOO))


@contextlib.contextmanager
def _serving(stylizer, **limits):
    from instyle.serve.app import Limits, create_app

    defaults = dict(max_batch=1, max_wait_ms=0, queue=4, max_upload_mb=1, max_inflight_mb=1.5, timeout_s=60)
    with running_server(create_app(stylizer, Limits(**(defaults | limits)))) as (url, server):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield SimpleNamespace(url=url, server=server, client=client, port=int(url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def live(stylizer):
    with _serving(stylizer) as live:
        yield live


def _metric(live, name: str, **labels) -> float:
    """A sample of the server's /metrics, read with prometheus_client's own parser (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(live.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _until(what, check, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _image(fmt="PNG", frames=1, side=24) -> bytes:
    from PIL import Image

    pictures = [Image.new("RGB", (side, side), (40 * i, 90, 160)) for i in range(frames)]
    buffer = stdio.BytesIO()
    pictures[0].save(buffer, format=fmt, save_all=frames > 1, append_images=pictures[1:])
    return buffer.getvalue()


def _raw(live, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    sock.sendall(head + body)
    return sock


def _head(length: int, path="/v1/stylize", media="image/png") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\nContent-Length: {length}\r\n"
            "\r\n").encode()


def _multipart(filename: str, data: bytes, fields: dict | None = None, files: int = 1) -> tuple[bytes, str]:
    """A multipart body written by hand: the file name's bytes exactly as given (UTF-8, line breaks and all)."""
    boundary = "instyleboundary7d2f"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    for _ in range(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="'.encode()
                     + filename.encode() + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _assert_refusal(r, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


@pytest.mark.parametrize("name", ["日本.gif", "line\nbreak.gif", "<img src=x onerror=alert(1)>.gif", "100%.gif"])
def test_a_file_name_reaches_the_warnings_header_percent_encoded(live, name):
    """A 2-frame GIF (the server warns that only the first frame is stylized, naming the upload): the header is
    printable ASCII and decodes to the name the client sent."""
    body, media = _multipart(name, _image("GIF", frames=2))
    r = live.client.post("/v1/stylize", content=body, headers={"content-type": media})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif"
    raw = dict(r.headers.raw)[b"x-instyle-warnings"]
    assert all(0x20 <= b < 0x7F for b in raw), raw
    assert unquote(raw.decode("ascii")) == f"{name}: 2 frames; only the first is stylized"
    assert "set-cookie" not in r.headers


def test_every_refusal_of_the_framework_is_one_json_error_and_counted(live):
    from instyle.serve.options import FIELDS

    png = _image()
    too_many_fields, media = _multipart("a.png", png, {f"f{i}": "1" for i in range(len(FIELDS) + 1)})
    two_files, media2 = _multipart("a.png", png, files=2)
    cases = [("GET", "/nowhere", {}, 404, "not_found"),
             ("GET", "/static/nothing.js", {}, 404, "not_found"),
             ("GET", "/docs", {}, 404, "not_found"),  # the API docs load a CDN: off unless --api-docs
             ("GET", "/v1/stylize", {}, 405, "method_not_allowed"),
             ("POST", "/v1/stylize", dict(content=too_many_fields, headers={"content-type": media}), 400,
              "bad_input"),
             ("POST", "/v1/stylize", dict(content=two_files, headers={"content-type": media2}), 400, "bad_input")]
    for method, path, request, status, cause in cases:
        before = _metric(live, "instyle_errors_total", cause=cause)
        _assert_refusal(live.client.request(method, path, **request), status)
        assert _metric(live, "instyle_errors_total", cause=cause) == before + 1, (method, path)
    before = _metric(live, "instyle_errors_total", cause="bad_http")
    with _raw(live, b"NOT HTTP AT ALL\r\n\r\n") as sock:  # uvicorn's own refusal, before any route
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 400 and answer.getheader("content-type") == "application/json"
        assert list(json.loads(answer.read())) == ["error"]
    assert _metric(live, "instyle_errors_total", cause="bad_http") == before + 1
    assert live.client.get("/healthz").status_code == 200


def test_the_page_runs_no_inline_code_and_has_a_content_security_policy(live):
    page = live.client.get("/")
    csp = {d.split()[0]: d.split()[1:] for d in page.headers["content-security-policy"].split(";") if d.strip()}
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"], csp
    assert not [v for values in csp.values() for v in values if v.startswith("http") or "unsafe" in v], csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert not re.search(r"\s(style|on\w+)\s*=", html), "an inline style or event handler"
    script = live.client.get("/static/app.js").text
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script


@contextlib.contextmanager
def _log_records(more=()):
    """Records of the server's loggers (its own one line per refusal, uvicorn's, `more`) while the block runs."""
    records: list[logging.LogRecord] = []
    arrived = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
            arrived.set()

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("instyle.serve", "uvicorn", "uvicorn.error", *more)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield records, arrived
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def test_an_upload_cut_mid_body_is_one_log_line_without_traceback(live):
    with _log_records() as (records, arrived):
        before = _metric(live, "instyle_errors_total", cause="client_gone")
        sock = _raw(live, _head(100_000), b"\x89PNG" + b"\0" * 1000)
        sock.close()
        _until("the server noticed", lambda: arrived.is_set())
        _until("counted", lambda: _metric(live, "instyle_errors_total", cause="client_gone") == before + 1)
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "client_gone" in lines[0] and "\n" not in lines[0], lines
    assert live.client.post("/v1/stylize", content=_image()).status_code == 200


def test_a_stalled_upload_is_answered_408_and_its_connection_closed(stylizer):
    with _serving(stylizer, body_timeout_s=0.5) as live:
        sock = _raw(live, _head(10_000), b"\x89PNG")  # the rest never comes
        with sock:
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert answer.status == 408 and answer.getheader("content-type") == "application/json"
            assert "not received within 0.5 s" in json.loads(answer.read())["error"]
            assert sock.recv(1) == b""  # closed: a stalled socket is not held
        assert _metric(live, "instyle_errors_total", cause="body_timeout") == 1
        assert live.client.get("/healthz").status_code == 200


def test_uploads_held_at_once_are_bounded(live):
    """One upload holds 1 MB of the 1.5 MB bound (stalled after its headers); another of 0.8 MB is 503 with
    Retry-After; once the first goes, the second is served."""
    other = _image(side=300)
    other += b"\0" * (800_000 - len(other))  # a PNG with trailing bytes: decodes as the image
    sock = _raw(live, _head(1_000_000), b"\x89PNG")
    try:
        _until("the stalled upload's bytes held", lambda: _metric(live, "instyle_upload_bytes_held") >= 1_000_000)
        r = live.client.post("/v1/stylize", content=other)
        assert "--max-inflight-mb" in _assert_refusal(r, 503) and r.headers["retry-after"] == "1"
    finally:
        sock.close()
    _until("released", lambda: _metric(live, "instyle_upload_bytes_held") == 0)
    assert live.client.post("/v1/stylize", content=other).status_code == 200


def test_a_request_whose_client_went_away_leaves_the_queue_unstylized(live, stylizer):
    png = _image()
    images = _metric(live, "instyle_images_total")
    stylizer.opened.clear()
    holder = threading.Thread(target=lambda: live.client.post("/v1/stylize", content=png))
    try:
        holder.start()
        _until("the first request in the worker", lambda: live.client.get("/healthz").json()["queue_depth"] == 1)
        sock = _raw(live, _head(len(png)), png)
        _until("the second one queued", lambda: live.client.get("/healthz").json()["queue_depth"] == 2)
        sock.close()
        _until("the abandoned one dropped", lambda: live.client.get("/healthz").json()["queue_depth"] == 1)
    finally:
        stylizer.opened.set()
        holder.join(60)
    assert _metric(live, "instyle_images_total") == images + 1  # the first request's image only
    assert _metric(live, "instyle_errors_total", cause="client_gone") >= 1


def test_shutdown_is_bounded_while_an_upload_stalls(stylizer):
    with _log_records() as (records, _), _serving(stylizer, body_timeout_s=600, shutdown_timeout_s=0.5) as live:
        sock = _raw(live, _head(10_000), b"\x89PNG")
        try:
            _until("the upload in progress", lambda: _metric(live, "instyle_upload_bytes_held") > 0)
            live.server.should_exit = True
            live.server.thread.join(60)
            assert not live.server.thread.is_alive(), "the server waited on a stalled upload"
            answer = http.client.HTTPResponse(sock)
            try:
                answer.begin()
            except (ConnectionError, http.client.HTTPException):
                return  # closed before its answer went out: nothing more to check
            assert answer.status == 503 and "shutting down" in json.loads(answer.read())["error"]
            assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]
        finally:
            sock.close()


def test_api_docs_are_served_only_when_asked_for(stylizer):
    """/docs and /redoc load Swagger UI and ReDoc from a CDN: absent by default, present with --api-docs."""
    from instyle.serve.app import create_app

    def paths(app):
        return {getattr(r, "path", None) for r in app.routes}

    assert not {"/docs", "/redoc"} & paths(create_app(stylizer))
    assert {"/docs", "/redoc", "/openapi.json"} <= paths(create_app(stylizer, api_docs=True))
