"""What the decoders report while one thread reads a file (Python warnings, libtiff's messages), caught for that
thread alone, without touching file descriptor 2.

libtiff (inside Pillow) prints decoding problems on the process's stderr from its library-wide error handler.
Pointing descriptor 2 at a file around a decode is process-wide: under threads one read collects another's lines
or a server's log line, and stderr can be left pointing at a deleted file. Instead libtiff's error handler is
replaced, once, by one that formats the message and hands it to the capture open on the calling thread (libtiff
calls it on the thread that decodes); with no capture open there, it prints the line as libtiff's own handler
does. Where libtiff's handler cannot be set (a Pillow without libtiff, an ABI not known here) its messages stay
on stderr, never in another file's lines.

Python's warning filters and `showwarning` are process-wide too: a capture holds one lock while it has them
replaced, and routes only the capturing thread's warnings to it (another thread's go where they always go). So
captures on several threads run one at a time; a C decoder's work inside them is what they wait for.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
import warnings

_local = threading.local()
_lock = threading.Lock()
_warnings_lock = threading.RLock()
_state: dict = {}  # "handler": the installed callback (kept alive while libtiff may call it), or None: cannot
# va_list is passed as a pointer on these ABIs (x86-64 and arm64: an array or a by-reference struct)
_ABIS = {"x86_64", "amd64", "aarch64", "arm64"}
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


def _format(libc, module: bytes | None, fmt: bytes, ap) -> str:
    buffer = ctypes.create_string_buffer(1024)
    libc.vsnprintf(buffer, ctypes.c_size_t(len(buffer)), fmt, ctypes.c_void_p(ap))
    text = buffer.value.decode("utf-8", "replace")
    return f"{module.decode('utf-8', 'replace')}: {text}." if module else f"{text}."


def _install() -> bool:
    """Set libtiff's error handler once per process; False where it cannot be set."""
    with _lock:
        if "handler" not in _state:
            _state["handler"] = _make_handler() if platform.machine().lower() in _ABIS else None
        return _state["handler"] is not None


def _make_handler():
    try:
        from PIL import _imaging

        imaging = ctypes.CDLL(_imaging.__file__)  # already loaded: its symbols resolve through its libtiff
        set_handler = imaging.TIFFSetErrorHandler
        libc = ctypes.CDLL(None)
        libc.vsnprintf.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p)
    except (ImportError, OSError, AttributeError):
        return None

    def on_error(module, fmt, ap):
        try:
            line = _format(libc, module, fmt, ap)
            sink = getattr(_local, "lines", None)
            if sink is not None:
                sink.append(line)
            else:
                os.write(2, (line + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 -- nothing may raise into C
            pass

    handler = _HANDLER(on_error)
    set_handler.restype = ctypes.c_void_p
    set_handler.argtypes = (_HANDLER,)
    set_handler(handler)
    return handler


@contextlib.contextmanager
def _libtiff(lines: list[str]):
    if not _install():
        yield
        return
    outer = getattr(_local, "lines", None)
    _local.lines = lines
    try:
        yield
    finally:
        _local.lines = outer


@contextlib.contextmanager
def _python_warnings(lines: list[str]):
    me = threading.get_ident()
    with _warnings_lock, warnings.catch_warnings():  # restores the filters and showwarning on the way out
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def route(message, category, filename, lineno, file=None, line=None):
            if threading.get_ident() == me:
                lines.append(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = route
        yield


@contextlib.contextmanager
def capture(warned: list[str], c_lines: list[str]):
    """Append to `warned` the Python warnings and to `c_lines` libtiff's messages raised on this thread while the
    block runs; other threads' warnings and messages, and anything else written to stderr, go where they always
    go."""
    with _python_warnings(warned), _libtiff(c_lines):
        yield
