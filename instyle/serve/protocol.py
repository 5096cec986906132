"""uvicorn's HTTP/1.1 protocol (h11) with its one answer of its own, the 400 for bytes that are not HTTP, in the
server's shape: {"error": ...} as JSON, counted in the metrics (uvicorn logs its own one line for it)."""
from __future__ import annotations

import json


def json_refusals(metrics):
    """The protocol class for uvicorn's Config(http=...)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonRefusals(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            metrics.errors.labels("bad_http").inc()
            metrics.requests.labels("other", "400").inc()
            body = json.dumps({"error": msg}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonRefusals
