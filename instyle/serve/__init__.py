"""`instyle serve`: a local web page and an HTTP API over one warm Stylizer (docs/architecture.md, Serving).

app.py builds the FastAPI app (routes, status codes); limits.py holds the limits and their defaults; options.py
checks a request's controls; batcher.py groups concurrent requests of one size into batches run in one worker
thread; live.py is /v1/live, webcam frames over a WebSocket through the same batcher (newest frame wins per
viewer); uploads.py turns request bodies into Pictures with the CLI's own per-file rules and encodes results
with the CLI's writer; prometheus.py is the Prometheus registry (/metrics); thumbnails.py draws the style
swatches; static/ is the page (no external assets). Against hostile clients: refusals.py answers every
refusal as {"error"}, counted and logged as one line; middleware.py counts every answer and adds the
Content-Security-Policy; budget.py bounds the upload bytes held at once; text.py makes client text safe for a
header or a log line; protocol.py gives uvicorn's own 400 the same shape.
"""
