"""`/v1/live` on loopback: a WebSocket client gets each frame back as the Stylizer's answer for the decoded frame,
switches styles mid-stream, floods (only the newest waiting frame is stylized), sends bad settings and frames (an
error, the connection goes on), hostile ones (closed), one viewer too many (refused) and goes away (its state
freed); then the page's Live mode in headless Chromium with a fake camera playing a clip made from a photo."""
from __future__ import annotations

import io as stdio
import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("websockets")

from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from instyle.cli import main  # noqa: E402
from tests.serve_live import Gate, live_server  # noqa: E402

ZOO = dict(backend="eager", precision="fp32", device="cpu", report=False)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = stdio.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(stdio.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _photo(data, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def stylizer():
    import instyle

    return Gate(instyle.load(None, **ZOO))


@pytest.fixture(scope="module")
def server(stylizer):
    """The shipped styles; two viewers at most, frames of at most 160 px and 64 kB."""
    from instyle.serve.app import Limits, create_app
    from instyle.serve.live import LiveLimits

    live = LiveLimits(max_viewers=2, max_frame_side=160, max_frame_mb=1 / 16, max_fps=1000)
    with live_server(create_app(stylizer, Limits(max_batch=4, max_wait_ms=20), live_limits=live)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.ws = url.replace("http://", "ws://") + "/v1/live"
            yield client


@pytest.fixture(scope="module")
def frame(data) -> bytes:
    return _jpeg(_photo(data, (64, 48)))


def _answer(ws) -> tuple[dict, bytes]:
    """The next answer: its header and JPEG (an error fails the test)."""
    header = json.loads(ws.recv(timeout=60))
    assert "error" not in header, header
    jpeg = ws.recv(timeout=60)
    assert isinstance(jpeg, bytes) and jpeg[:3] == b"\xff\xd8\xff"
    return header, jpeg


def _settings(ws, **fields) -> None:
    ws.send(json.dumps(fields))
    assert json.loads(ws.recv(timeout=60)) == {"settings": "ok"}


def _error(ws) -> dict:
    answer = json.loads(ws.recv(timeout=60))
    assert "error" in answer and "\n" not in answer["error"], answer
    return answer


def _health(server) -> dict:
    return server.get("/healthz").json()


def _wait_viewers(server, n: int) -> None:
    deadline = time.monotonic() + 20
    while _health(server)["live_viewers"] != n:
        assert time.monotonic() < deadline, f"live viewers: {_health(server)['live_viewers']}, never {n}"
        time.sleep(0.02)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(255 ** 2 / mse) if mse else float("inf")


def test_a_frame_comes_back_as_the_stylizers_answer(server, stylizer, frame):
    """The answer is the Stylizer's output for the decoded frame and the same controls, up to the answer's JPEG
    encoding (quality 95): mean |diff| within the codec's own error (or 3 of 255), PSNR >= 30 dB."""
    import torch

    from instyle.serve import options

    with connect(server.ws) as ws:
        _settings(ws, style="mosaic", strength=0.8, preserve_color=False)
        ws.send(frame)
        header, jpeg = _answer(ws)
    assert header["seq"] == 1 and (header["width"], header["height"]) == (64, 48) and header["latency_ms"] > 0
    controls = options.parse({"style": "mosaic", "strength": "0.8"}, stylizer)
    x = torch.from_numpy(_rgb(frame).astype(np.float32)).permute(2, 0, 1)[None]
    expected = stylizer(x, strength=0.8, style_weights=controls.weights[None])[0].clamp(0, 255).round()
    expected = expected.to(torch.uint8).permute(1, 2, 0).numpy()
    got = _rgb(jpeg).astype(np.int16)
    assert got.shape == expected.shape == (48, 64, 3)
    diff = np.abs(got - expected).mean()
    # The JPEG codec's own error on this small, textured picture (about 4.5 of 255 at quality 95): the answer may
    # differ from the Stylizer's output by that much and no more.
    encoded = _rgb(_jpeg(expected, 95)).astype(np.int16)
    own = np.abs(encoded - expected).mean()
    assert diff <= max(3.0, own + 0.5) and _psnr(got, expected) >= 30, (diff, own, _psnr(got, expected))
    assert np.abs(got - encoded).max() <= 1  # it is that output, JPEG-encoded


def test_switching_the_style_changes_the_following_frames(server, frame):
    with connect(server.ws) as ws:
        looks = []
        for style in ("candy", "mosaic", "candy"):
            _settings(ws, style=style)
            ws.send(frame)
            looks.append(_rgb(_answer(ws)[1]).astype(np.int16))
        _settings(ws, mix="candy=1,mosaic=1", temporal=0.5)  # a mix, smoothed over time: answered too
        for _ in range(2):
            ws.send(frame)
            looks.append(_rgb(_answer(ws)[1]).astype(np.int16))
    candy, mosaic, again, mixed, smoothed = looks
    assert np.abs(candy - mosaic).mean() > 10
    assert np.abs(candy - again).max() == 0  # the same frame and settings: the same bytes
    assert np.abs(mixed - candy).mean() > 3 and np.abs(mixed - mosaic).mean() > 3
    assert np.abs(smoothed - mixed).mean() < 3  # a still frame: the blend keeps it


def test_a_flood_from_one_viewer_stylizes_only_the_newest_waiting_frame(server, stylizer, frame):
    """Twelve frames sent while the worker is held: the first is being stylized, of the others only the newest
    waits; the answers' numbers rise, end with the last frame's, and are fewer than the frames sent."""
    dropped = _metric(server, "instyle_live_frames_total", outcome="dropped")
    with connect(server.ws) as ws:
        stylizer.opened.clear()
        try:
            ws.send(frame)
            deadline = time.monotonic() + 20
            while _health(server)["queue_depth"] < 1:  # frame 1 reached the batcher
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for _ in range(11):
                ws.send(frame)
            _settings(ws, style="candy")  # received after the frames: they are all in
        finally:
            stylizer.opened.set()
        seqs = [_answer(ws)[0]["seq"]]
        while seqs[-1] != 12:
            seqs.append(_answer(ws)[0]["seq"])
    assert seqs == [1, 12]
    assert _metric(server, "instyle_live_frames_total", outcome="dropped") == dropped + 10


def _metric(server, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_bad_settings_and_frames_are_errors_and_the_viewer_goes_on(server, data, frame):
    big = _jpeg(_photo(data, (200, 150)))  # over the 160 px side limit, under the bytes limit
    with connect(server.ws) as ws:
        for text, error in [("not json", "settings: expected a JSON object"),
                            ("[1, 2]", "expected a JSON object (not an object)"),
                            ('{"strength": 2}', "strength must be between 0"),
                            ('{"style": "cubism"}', "unknown style 'cubism'"),
                            ('{"colour": true}', "unknown field 'colour'"),
                            ('{"style": "candy", "mix": "wave=1"}', "give style or mix, not both"),
                            ('{"format": "png"}', "format: live answers are JPEG"),
                            ('{"temporal": 1}', "temporal: expected a number in [0, 1)"),
                            ('{"style": ["candy"]}', "style: expected a string, number or boolean")]:
            ws.send(text)
            assert error in _error(ws)["error"], text
        for seq, (bad, error) in enumerate([(b"hello", "frame 1: not a JPEG or WebP image"),
                                            (frame[: len(frame) // 3], "frame 2"),
                                            (big, "frame 3: 200x150 is over the live frame side limit of 160")], 1):
            ws.send(bad)
            answer = _error(ws)
            assert answer["seq"] == seq and answer["error"].startswith(error), answer
        ws.send(frame)
        assert _answer(ws)[0]["seq"] == 4
        _settings(ws, style="wave", max_side=32)
        ws.send(big)
        assert _error(ws)["seq"] == 5  # the side limit holds for the frame as sent, whatever max_side asks
        ws.send(frame)
        header, _ = _answer(ws)
        assert (header["seq"], header["width"], header["height"]) == (6, 32, 24)


@pytest.mark.parametrize("message, error", [(b"\xff\xd8\xff" + bytes(70_000), "over the limit of 65536 bytes"),
                                            (json.dumps({"style": "x" * 5000}), "settings message over 4096 bytes"),
                                            (bytes(1_200_000), None)])  # past uvicorn's own bound: cut unread
def test_a_message_over_the_bytes_limits_closes_the_viewer(server, message, error):
    with connect(server.ws, max_size=None) as ws:
        ws.send(message)
        if error:
            assert error in _error(ws)["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1009
    _wait_viewers(server, 0)


def test_one_viewer_too_many_is_refused_and_a_viewer_that_goes_frees_its_place(server, stylizer, frame):
    with connect(server.ws) as first, connect(server.ws) as second:
        _wait_viewers(server, 2)
        with connect(server.ws) as third:
            assert "busy: 2 live viewers already" in _error(third)["error"]
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=30)
            assert closed.value.rcvd.code == 1013
        stylizer.opened.clear()  # first's frames wait in the batcher's queue and its own slot when it goes
        try:
            first.send(frame)
            first.send(frame)
            first.close()
            _wait_viewers(server, 1)
        finally:
            stylizer.opened.set()
        second.send(frame)
        assert _answer(second)[0]["seq"] == 1
    _wait_viewers(server, 0)
    assert _health(server)["queue_depth"] == 0
    with connect(server.ws) as again:  # the places are free
        again.send(frame)
        _answer(again)


def test_a_page_of_another_origin_is_refused(server):
    with pytest.raises(InvalidStatus) as refused:
        with connect(server.ws, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    _wait_viewers(server, 0)


def test_the_viewer_rate_window():
    from instyle.serve.live import Viewer

    viewer = Viewer(settings=None)
    assert [viewer.admit(10.0 + i * 0.1, 3) for i in range(5)] == [True, True, True, False, False]
    assert viewer.admit(11.05, 3)  # a new second, a new window


@pytest.mark.parametrize("argv, text", [(["--live-max-viewers", "0"], "--live-max-viewers must be > 0"),
                                        (["--live-max-fps", "-1"], "--live-max-fps must be > 0")])
def test_serve_live_flags(capsys, argv, text):
    assert main(["serve", *argv]) == 2
    assert capsys.readouterr().err.strip().startswith(f"instyle serve: error: {text}, got ")


def _y4m(path, frames: list[np.ndarray], fps: int = 10) -> None:
    """A YUV4MPEG2 clip (4:2:0, full-range BT.601) of RGB frames: the fake camera's input."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u, v = 128 + 0.564 * (b - y), 128 + 0.713 * (r - y)
            f.write(b"FRAME\n")
            for plane, step in ((y, 1), (u, 2), (v, 2)):
                sub = plane.reshape(h // step, step, w // step, step).mean(axis=(1, 3))
                f.write(np.clip(sub + 0.5, 0, 255).astype(np.uint8).tobytes())


# Functions, not expressions: Playwright evaluates an expression with eval(), which the page's policy forbids.
CANVAS = """(id) => document.getElementById(id).toDataURL("image/png")"""
FRAMES_AT_LEAST = """(n) => Number(document.getElementById("live-frames").textContent) >= n"""


def _canvas(page, name: str) -> np.ndarray:
    import base64

    return _rgb(base64.b64decode(page.evaluate(CANVAS, name).split(",", 1)[1])).astype(np.int16)


def _frames(page) -> int:
    return int(page.inner_text("#live-frames"))


def test_the_page_streams_a_fake_camera_live(data, tmp_path):
    """Live mode with Chromium's fake camera: stylized frames reach the output canvas, a style picked mid-stream
    changes them, the page stays within its own origin and policy, and closing it frees the viewer."""
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no chromium: apt-get install chromium")
    import instyle
    from instyle.serve.app import Limits, create_app

    photo = _photo(data, (360, 240))
    clip = tmp_path / "camera.y4m"
    _y4m(clip, [np.ascontiguousarray(photo[:, dx:dx + 320]) for dx in (0, 8, 16, 24)])  # a slow pan
    stylizer = instyle.load(None, **ZOO)
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}"]
    with live_server(create_app(stylizer, Limits(max_wait_ms=0))) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            outside, blocked = [], []
            page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("request", lambda r: None if r.url.startswith((url, url.replace("http", "ws"), "blob:", "data:"))
                    else outside.append(r.url))
            page.goto(url + "/")
            page.wait_for_selector(".style >> nth=9")
            page.click("#mode-live")
            page.select_option("#live-size", "320x240")
            page.fill("#max-side", "128")
            page.click("#live-start")
            page.wait_for_function(FRAMES_AT_LEAST, arg=2, timeout=60_000)
            camera, candy = _canvas(page, "live-in"), _canvas(page, "live-out")
            assert camera.shape == (240, 320, 3) and candy.shape == (96, 128, 3)
            assert camera.std() > 20 and candy.std() > 20  # pictures, not blank canvases
            from PIL import Image

            small = np.asarray(Image.fromarray(camera.astype(np.uint8)).resize((128, 96)), dtype=np.int16)
            assert np.abs(candy - small).mean() > 20  # stylized, not the camera's picture
            seen = _frames(page)
            page.click(".style[data-name='mosaic']")
            page.wait_for_function(FRAMES_AT_LEAST, arg=seen + 2, timeout=60_000)
            mosaic = _canvas(page, "live-out")
            assert np.abs(mosaic - candy).mean() > 10
            page.wait_for_function("() => document.getElementById('live-latency').textContent !== '–'")
            assert float(page.inner_text("#live-fps")) >= 0 and float(page.inner_text("#live-latency")) > 0
            page.evaluate("() => window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "live.jpg"), type="jpeg", quality=70)
            if os.environ.get("INSTYLE_SCREENSHOT_DIR"):
                page.screenshot(path=os.path.join(os.environ["INSTYLE_SCREENSHOT_DIR"], "live-page.jpg"),
                                type="jpeg", quality=70)
            page.close()
        finally:
            browser.close()
        assert not outside, f"the page connected outside the server: {outside}"
        assert not blocked, f"the page's own Content-Security-Policy blocked it: {blocked}"
        deadline = time.monotonic() + 20
        while httpx.get(url + "/healthz").json()["live_viewers"] != 0:
            assert time.monotonic() < deadline, "the closed page's viewer was never freed"
            time.sleep(0.05)
