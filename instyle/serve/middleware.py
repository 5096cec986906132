"""What every HTTP answer passes through on its way out: it is counted in instyle_requests_total{route,code}
(an answer the app never started counts as 500), and it carries the headers that keep the page to itself: a
Content-Security-Policy that lets it load scripts, styles and images from this server only (blob: and data:
for the pictures it shows) and run no inline script, nosniff, no referrer, no framing. /docs and /redoc, when
turned on (--api-docs), load their assets from a CDN and are left without the policy."""
from __future__ import annotations

from starlette.datastructures import MutableHeaders

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY"}
_DOCS = ("/docs", "/redoc")


class Answers:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        code = []
        own = not scope["path"].startswith(_DOCS)

        async def sending(message):
            if message["type"] == "http.response.start":
                code.append(message["status"])
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(raw=message["headers"])
                for name, value in HEADERS.items():
                    if own or name != "Content-Security-Policy":
                        headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, str(code[0] if code else 500)).inc()
