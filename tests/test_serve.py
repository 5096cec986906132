"""`instyle serve` on loopback: the page and API, every refusal (each followed by a request that succeeds), the
pixels against `instyle stylize` itself, micro-batching seen in /metrics, overload (503) and timeouts (504)."""
from __future__ import annotations

import io as stdio
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from instyle.cli import main  # noqa: E402
from tests.serve_live import Gate, live_server  # noqa: E402

ZOO = dict(backend="eager", precision="fp32", device="cpu", report=False)


def _png(img) -> bytes:
    buffer = stdio.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(stdio.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"), dtype=np.int16)


@pytest.fixture(scope="module")
def zoo_server():
    """The shipped styles, eager fp32, a long batching window so that concurrent requests share a batch."""
    import instyle
    from instyle.serve.app import Limits, create_app

    limits = Limits(max_batch=4, max_wait_ms=400, max_pixels=1 << 20, max_upload_mb=1.0, queue=16, timeout_s=60)
    with live_server(create_app(instyle.load(None, **ZOO), limits)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def photo(data) -> bytes:
    return (data / "content" / "demo" / "chicago.jpg").read_bytes()


def _ok(client, photo, **params):
    """A request that must succeed: the server still serves."""
    r = client.post("/v1/stylize", content=photo, params={"max_side": 64, **params},
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    return r


def test_page_styles_health_docs(zoo_server):
    page = zoo_server.get("/")
    assert page.status_code == 200 and "<title>instyle</title>" in page.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/"), f"the page loads {asset} from outside the server"
        assert zoo_server.get(asset).status_code == 200, asset
    assert "http" not in zoo_server.get("/static/app.js").text  # no CDN: every request goes to the server itself
    body = zoo_server.get("/v1/styles").json()
    names = [s["name"] for s in body["styles"]]
    from instyle import checkpoint

    shipped = checkpoint.style_names(checkpoint.read_metadata(next(iter(checkpoint.shipped().values()))))
    assert names == shipped and names[0] == "candy" and body["styles"][0]["default"] and body["multi_style"]
    thumbs = [_pixels(zoo_server.get(s["thumbnail"]).content) for s in body["styles"]]
    assert all(t.shape == (96, 96, 4) for t in thumbs)
    assert min(np.abs(a - b).mean() for i, a in enumerate(thumbs) for b in thumbs[i + 1:]) > 1  # ten looks
    assert zoo_server.get("/v1/styles/nope/thumbnail.png").status_code == 404
    health = zoo_server.get("/healthz").json()
    assert health["status"] == "ok" and health["backend"] == "eager"
    assert "/v1/stylize" in zoo_server.get("/openapi.json").json()["paths"]


def _rgba_exif_png(data) -> bytes:
    """An odd-size RGBA PNG whose EXIF says 'rotate 90° clockwise' (orientation 6)."""
    from PIL import Image

    with Image.open(data / "content" / "demo" / "amber.jpg") as img:
        rgb = img.convert("RGB").resize((61, 47))
    alpha = Image.linear_gradient("L").resize((61, 47))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = stdio.BytesIO()
    rgba.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["style", "mix", "rgba-exif"])
def test_pixels_equal_the_cli(zoo_server, data, tmp_path, case):
    """The server's answer equals `instyle stylize`'s output file for the same file and settings (|Δ| <= 1)."""
    if case == "rgba-exif":
        src = tmp_path / "rgba.png"
        src.write_bytes(_rgba_exif_png(data))
        cli = ["--style", "the_scream", "--strength", "0.8"]
        fields = {"style": "the_scream", "strength": "0.8"}
    else:
        src = data / "content" / "demo" / "chicago.jpg"
        cli = ["--max-side", "93", "--preserve-color", "--style-scale", "1.5"] + (
            ["--style", "mosaic", "--strength", "0.6"] if case == "style" else ["--mix", "candy=2,wave=1"])
        fields = {"max_side": "93", "preserve_color": "true", "style_scale": "1.5"} | (
            {"style": "mosaic", "strength": "0.6"} if case == "style" else {"mix": "candy=2,wave=1"})
    assert main(["stylize", str(src), "-o", str(tmp_path / "out"), "--format", "png", "--backend", "eager",
                 "--precision", "fp32", "--device", "cpu", *cli]) == 0
    expected = _pixels((tmp_path / "out" / (src.stem + ".png")).read_bytes())
    r = zoo_server.post("/v1/stylize", files={"image": (src.name, src.read_bytes())}, data=fields | {"format": "png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    got = _pixels(r.content)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1
    if case == "rgba-exif":
        assert got.shape == (61, 47, 4) and got[..., 3].min() < 50 < 200 < got[..., 3].max()  # rotated, alpha kept


def _bad_inputs(data, photo):
    from PIL import Image

    huge = _png(Image.new("1", (1500, 1000)))  # 1.5 Mpx in a few kB: over the 1 Mpx limit
    # A valid header that claims 4000x4000, then garbage: decoding would fail (400); the header check says 413.
    ihdr = b"IHDR" + (4000).to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") \
        + (64).to_bytes(4, "big") + b"IDAT" + b"\x55" * 68
    return [
        ("too many bytes", dict(content=b"\xff" * ((1 << 20) + 1)), 413, "over the limit of 1048576 bytes"),
        ("too many bytes, chunked", dict(content=iter([b"\xff" * (1 << 18)] * 5)), 413, "upload is over the limit"),
        ("too many pixels", dict(content=huge), 413, "1500x1000 = 1500000 pixels is over the limit"),
        ("pixels from the header", dict(content=bomb), 413, "4000x4000"),
        ("not an image", dict(content=b"hello, world"), 400, "upload: not an image file"),
        ("empty", dict(content=b""), 400, "empty upload"),
        ("damaged", dict(files={"image": ("half.jpg", photo[: len(photo) // 3])}), 400, "half.jpg: "),
        ("unknown style", dict(content=photo, params={"style": "cubism"}), 400, "known: candy, mosaic"),
        ("bad mix", dict(content=photo, params={"mix": "candy=x"}), 400, "mix 'candy=x'"),
        ("bad strength", dict(content=photo, params={"strength": "2"}), 400, "strength must be between 0"),
        ("unknown field", dict(content=photo, params={"colour": "1"}), 400, "unknown field 'colour'"),
        ("bad format", dict(content=photo, params={"format": "exe"}), 400, "unknown output format"),
        ("no file field", dict(files={"style": (None, "candy")}), 400, "expected one image file field"),
    ]


def test_every_bad_input_is_one_line_and_the_server_goes_on(zoo_server, data, photo):
    for what, request, status, text in _bad_inputs(data, photo):
        r = zoo_server.post("/v1/stylize", **request)
        assert r.status_code == status, (what, r.text)
        error = r.json()["error"]
        assert text in error and "\n" not in error and "Traceback" not in error, (what, error)
        assert "/tmp" not in error, (what, error)  # the upload's name, never the server's temporary file
        _ok(zoo_server, photo)
    metrics = zoo_server.get("/metrics").text
    assert 'instyle_errors_total{cause="too_large"} 4.0' in metrics
    assert 'instyle_requests_total{code="400",route="/v1/stylize"} 9.0' in metrics



def _histogram(metrics: str, name: str) -> dict[str, float]:
    buckets = re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M)
    return {m.group(1): float(m.group(2)) for m in buckets}


def test_concurrent_requests_share_a_batch_with_their_own_styles(zoo_server, photo):
    """Four requests at once, two styles: batched (a batch > 1 in /metrics), each answer its own style's, equal
    to the same request made alone."""
    styles = ["candy", "wave", "candy", "wave"]
    params = [{"style": s, "format": "png", "max_side": 80} for s in styles]

    def post(p):
        return zoo_server.post("/v1/stylize", content=photo, params=p, headers={"content-type": "image/jpeg"})

    alone = {s: _pixels(post({"style": s, "format": "png", "max_side": 80}).content) for s in ("candy", "wave")}
    before = _histogram(zoo_server.get("/metrics").text, "instyle_batch_size")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, params))
    after = _histogram(zoo_server.get("/metrics").text, "instyle_batch_size")
    singles = after["1.0"] - before["1.0"]
    batches = after["+Inf"] - before["+Inf"]
    assert batches - singles >= 1, f"no batch of more than one image: {before} -> {after}"
    for style, r in zip(styles, answers):
        assert r.status_code == 200, r.text
        assert np.abs(_pixels(r.content) - alone[style]).max() <= 1
    assert np.abs(alone["candy"] - alone["wave"]).mean() > 5


def test_a_mix_whose_sum_overflows_is_400_before_queueing_and_its_neighbours_are_served(zoo_server, photo):
    """Each weight finite, their float32 sum not: refused on its own (400) while three requests sent with it, in
    the same batching window, get what each gets alone."""
    def post(p):
        return zoo_server.post("/v1/stylize", content=photo, headers={"content-type": "image/jpeg"},
                               params={"format": "png", "max_side": 72} | p)

    good = [{"style": "candy"}, {"mix": "wave=1,mosaic=2"}, {"style": "feathers"}]
    alone = [_pixels(post(p).content) for p in good]
    images = float(re.search(r"^instyle_images_total (\S+)$", zoo_server.get("/metrics").text, re.M).group(1))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, good + [{"mix": "candy=3e38,mosaic=3e38"}]))
    bad = answers.pop()
    assert bad.status_code == 400 and "overflows" in bad.json()["error"], bad.text
    for expected, r in zip(alone, answers):
        assert r.status_code == 200, r.text
        assert np.abs(_pixels(r.content) - expected).max() <= 1
    after = float(re.search(r"^instyle_images_total (\S+)$", zoo_server.get("/metrics").text, re.M).group(1))
    assert after == images + 3  # the refused one never reached the stylizer


@pytest.fixture(scope="module")
def gated(model_path):
    """The random TransformerNet (one style) behind a gate; a queue of 2, one image a batch, a 3 s timeout."""
    import instyle
    from instyle.serve.app import Limits, create_app

    gate = Gate(instyle.load(str(model_path), **ZOO))
    limits = Limits(max_batch=1, max_wait_ms=0, queue=2, timeout_s=3)
    with live_server(create_app(gate, limits)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield gate, client


def _depth(client) -> int:
    return client.get("/healthz").json()["queue_depth"]


def _wait_depth(client, n: int) -> None:
    deadline = time.monotonic() + 30
    while _depth(client) < n:
        assert time.monotonic() < deadline, f"queue depth never reached {n}"
        time.sleep(0.02)


def test_full_queue_is_503_with_retry_after_then_serves(gated, photo):
    gate, client = gated
    gate.opened.clear()
    answers = []
    threads = []
    try:
        for n in (1, 2, 3):  # one held in the worker, two in the queue
            t = threading.Thread(target=lambda: answers.append(_ok(client, photo)))
            t.start()
            threads.append(t)
            _wait_depth(client, n)
        r = client.post("/v1/stylize", content=photo, params={"max_side": 64})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "busy" in r.json()["error"]
    finally:
        gate.opened.set()
        for t in threads:
            t.join(60)
    assert len(answers) == 3
    _ok(client, photo)
    assert 'instyle_errors_total{cause="queue_full"} 1.0' in client.get("/metrics").text


def test_a_request_past_its_timeout_is_504_then_serves(gated, photo):
    gate, client = gated
    gate.opened.clear()
    try:
        r = client.post("/v1/stylize", content=photo, params={"max_side": 64})
    finally:
        gate.opened.set()
    assert r.status_code == 504 and "timeout of 3 s" in r.json()["error"], r.text
    _ok(client, photo)
    one_style = client.get("/v1/styles").json()
    assert len(one_style["styles"]) == 1 and not one_style["multi_style"]
    _ok(client, photo, style=one_style["styles"][0]["name"])  # the name it lists is one it accepts
    r = client.post("/v1/stylize", content=photo, params={"style": "candy"})
    assert r.status_code == 400 and "unknown style 'candy'" in r.json()["error"]


def test_a_failing_stylizer_is_500_for_its_batch_then_serves(gated, photo):
    gate, client = gated
    gate.fail_next = True
    r = client.post("/v1/stylize", content=photo, params={"max_side": 64})
    assert r.status_code == 500 and "stylizing failed (RuntimeError: DefaultCPUAllocator" in r.json()["error"]
    _ok(client, photo)


@pytest.mark.parametrize("argv, text", [(["--max-batch", "0"], "--max-batch must be >= 1"),
                                        (["--timeout-s", "0"], "--timeout-s must be > 0"),
                                        (["--port", "70000"], "--port must be in 1..65535"),
                                        (["--body-timeout-s", "0"], "--body-timeout-s must be > 0"),
                                        (["--shutdown-timeout-s", "-1"], "--shutdown-timeout-s must be > 0"),
                                        (["--max-inflight-mb", "10"], "--max-inflight-mb must be >= "
                                         "--max-upload-mb (25)")])
def test_serve_command_line_errors(capsys, argv, text):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"instyle serve: error: {text}, got ") and "\n" not in err


def test_serve_flags_take_their_defaults_from_limits_and_offer_every_precision():
    import argparse

    from instyle.serve.app import Limits
    from instyle.serve_cli import _limits, add_arguments
    from instyle.specs import PRECISION_NAMES

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert _limits(parser.parse_args([])) == Limits()
    assert parser.parse_args(["--max-batch", "3"]).max_batch == 3
    for precision in PRECISION_NAMES:  # int8 included: the openvino backend runs it
        assert parser.parse_args(["--precision", precision]).precision == precision
