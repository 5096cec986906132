"""Client data made safe where it is not data any more: a header value (ASCII, no control characters: a file
name in any script or with a newline is percent-encoded UTF-8) and a log line (escaped, one line)."""
from __future__ import annotations

from urllib.parse import quote

_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(text: str) -> str:
    """`text` as a header value: printable ASCII as it is, everything else (and '%') percent-encoded UTF-8;
    urllib.parse.unquote gives the text back."""
    return quote(text, safe=_HEADER_SAFE)


def log_text(text: str, limit: int = 300) -> str:
    """`text` on one line of printable ASCII: other characters as Python escapes, at most `limit` of them."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
