"""The real server on loopback for the serve tests and the load test's smoke run: uvicorn in a thread, on a
socket bound to a free port before it starts (no race for the port)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def live_server(app):
    """Yield the base URL ("http://127.0.0.1:PORT") of `app` served by uvicorn until the block ends."""
    with running_server(app) as (url, _):
        yield url


@contextlib.contextmanager
def running_server(app):
    """Yield (base URL, uvicorn.Server) for `app`, with the limits the CLI gives uvicorn; stopped when the block
    ends (a test may stop it first, through server.should_exit)."""
    import uvicorn

    from instyle.serve.app import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    server.thread = thread
    thread.start()
    deadline = time.monotonic() + 120  # start-up includes the warm-up and the thumbnails
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Gate:
    """A Stylizer stand-in that waits for `opened` before each call: the tests hold the worker busy at will; with
    `fail_next` set, the next call raises the way a backend running out of memory does."""

    def __init__(self, stylizer):
        self._stylizer = stylizer
        self.opened = threading.Event()
        self.opened.set()
        self.fail_next = False

    def __getattr__(self, name):
        return getattr(self._stylizer, name)

    def __call__(self, *args, **kwargs):
        assert self.opened.wait(60), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return self._stylizer(*args, **kwargs)
