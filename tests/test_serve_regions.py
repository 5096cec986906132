"""Regions in `instyle serve`: POST /v1/stylize with the file fields mask / strength_map and the fields regions /
feather. The answer equals the library's eager run with Regions built here from the mask's pixels (not by the
server's reader); on the openvino backend regions with several styles run through the eager fallback (and match)
while one style plus `none` stays on openvino; every bad map is a one-line 400 (413 past the pixel limit) naming
its field; a request with maps is a batch of its own and leaves its neighbours' answers as they are alone."""
from __future__ import annotations

import asyncio
import io as stdio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

import instyle  # noqa: E402
from instyle.engine.regions import Regions  # noqa: E402
from tests.serve_live import live_server  # noqa: E402

ZOO = dict(precision="fp32", device="cpu", report=False)
W, H = 45, 31  # odd: the engine pads to its stride and crops back
TOLERANCE = 2  # on 0..255, PNG answers against the library's float output


def _png(a: np.ndarray, mode: str | None = None) -> bytes:
    buffer = stdio.BytesIO()
    Image.fromarray(a, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(stdio.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def photo(data) -> np.ndarray:
    """A W x H crop of chicago.jpg, H x W x 3 uint8."""
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        small = img.convert("RGB").resize((2 * W, 2 * H), Image.BICUBIC)
    return np.asarray(small.crop((W // 2, H // 2, W // 2 + W, H // 2 + H))).copy()


def _diagonal(w: int = W, h: int = H) -> np.ndarray:
    """0 above the diagonal, 255 below: H x W uint8."""
    yy, xx = np.mgrid[:h, :w]
    return np.where(xx * h + yy * w > w * h, 255, 0).astype(np.uint8)


def _coloured(w: int, h: int) -> np.ndarray:
    """Red left third, blue right third, grey between: H x W x 3 uint8."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:, : w // 3] = (255, 0, 0)
    a[:, 2 * w // 3:] = (0, 0, 255)
    return a


@pytest.fixture(scope="module")
def library():
    """The reference: the shipped zoo in eager fp32, untiled."""
    return instyle.load(None, backend="eager", tile="off", **ZOO)


def _reference(library, photo, regions: Regions) -> np.ndarray:
    library.set_regions(regions)
    try:
        y = library(torch.from_numpy(photo).permute(2, 0, 1)[None].float())
    finally:
        library.set_regions(None)
    return y[0].permute(1, 2, 0).numpy()


def _serve(backend: str, **limits):
    from instyle.serve.app import Limits, create_app

    limits = Limits(**({"max_batch": 4, "max_wait_ms": 400, "max_pixels": 1 << 20, "max_upload_mb": 1.0} | limits))
    app = create_app(instyle.load(None, backend=backend, **ZOO), limits)
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, app


@pytest.fixture(scope="module")
def eager_server():
    yield from _serve("eager")


@pytest.fixture(scope="module")
def openvino_server():
    pytest.importorskip("openvino")
    yield from _serve("openvino")


def _post(client, photo, files=None, **fields):
    return client.post("/v1/stylize", files={"image": ("photo.png", _png(photo))} | (files or {}),
                       data={"format": "png"} | fields)


# the two requests a test sends: (mask file, regions, feather) and the Regions that say the same, built here
def _two_styles():
    mask = _diagonal()
    return ("mask.png", _png(mask)), "0=candy;255=wave", "3", \
        Regions(labels=torch.from_numpy((mask == 255).astype(np.int64)), mixes=("candy", "wave"), feather=3)


def _colours_resized():
    mask = _coloured(2 * W, 2 * H)  # twice the photo's size: resized to it (nearest), with a warning
    labels = np.where(mask[..., 0] == 255, 0, np.where(mask[..., 2] == 255, 1, 2))
    return ("big.png", _png(mask)), "#ff0000=wave;#0000ff=candy=1,mosaic=1;*=none", "", \
        Regions(labels=torch.from_numpy(labels.astype(np.int64)), mixes=("wave", {"candy": 1, "mosaic": 1}, "none"))


@pytest.mark.parametrize("case", [_two_styles, _colours_resized], ids=["two-styles-feathered", "colours-resized"])
def test_a_mask_request_equals_the_library(eager_server, library, photo, case):
    client, _ = eager_server
    mask, spec, feather, regions = case()
    r = _post(client, photo, files={"mask": mask}, regions=spec, feather=feather)
    assert r.status_code == 200, r.text
    got, expected = _pixels(r.content), _reference(library, photo, regions)
    assert got.shape == (H, W, 3)
    assert np.abs(got - expected).max() <= TOLERANCE, np.abs(got - expected).max()
    plain = _pixels(_post(client, photo, style="candy").content)
    assert np.abs(got - plain).mean() > 5  # the regions show: not the default style everywhere
    warnings = r.headers.get("x-instyle-warnings")
    if case is _colours_resized:
        assert warnings == f"mask big.png is {2 * W}x{2 * H}, resized to the image's {W}x{H}"
    else:
        assert warnings is None


def test_a_strength_map_goes_with_the_requests_style(eager_server, library, photo):
    """strength_map alone (no mask) with style=mosaic: the full mosaic answer blended with the photo per pixel."""
    client, _ = eager_server
    ramp = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))
    r = _post(client, photo, files={"strength_map": ("fade.png", _png(ramp))}, style="mosaic")
    assert r.status_code == 200, r.text
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    w = torch.zeros(1, len(library.style_names))
    w[0, library.style_names.index("mosaic")] = 1
    full = library(x, style_weights=w)[0].permute(1, 2, 0).numpy()
    s = ramp[..., None] / 255.0
    expected = full * s + photo * (1 - s)
    got = _pixels(r.content)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(got[:, 0] - photo[:, 0]).max() == 0 and np.abs(got[:, -1] - full[:, -1]).max() <= 1  # 0 and 255


def test_openvino_runs_several_styles_through_the_eager_fallback(openvino_server, library, photo):
    """One style plus `none` is a strength map: openvino runs it, no fallback is built. Two styles: the eager fp32
    fallback, built once and kept, matches the library."""
    client, app = openvino_server
    mask = _diagonal()
    r = _post(client, photo, files={"mask": ("m.png", _png(mask))}, regions="0=none;255=candy")
    assert r.status_code == 200, r.text
    assert app.state.maps.fallback is None
    one = Regions(labels=torch.from_numpy((mask == 255).astype(np.int64)), mixes=("none", "candy"))
    assert np.abs(_pixels(r.content) - _reference(library, photo, one)).max() <= TOLERANCE
    mask_file, spec, feather, regions = _two_styles()
    fallbacks = []
    for _ in range(2):
        r = _post(client, photo, files={"mask": mask_file}, regions=spec, feather=feather)
        assert r.status_code == 200, r.text
        assert np.abs(_pixels(r.content) - _reference(library, photo, regions)).max() <= TOLERANCE
        fallbacks.append(app.state.maps.fallback)
    assert fallbacks[0] is fallbacks[1] is not None  # built once, kept
    assert fallbacks[0].backend == "eager" and fallbacks[0].precision == "fp32"
    assert client.get("/healthz").json()["backend"] == "openvino"


def _bad_requests(photo):
    mask = ("m.png", _png(_diagonal()))
    spec = "0=candy;255=wave"
    seven = _diagonal()
    seven[0, 0] = 7
    rgba = np.dstack([np.stack([_diagonal()] * 3, -1), np.full((H, W), 100, np.uint8)])
    deep = stdio.BytesIO()
    Image.fromarray(_diagonal().astype(np.uint16) * 257).save(deep, format="PNG")
    huge = stdio.BytesIO()
    Image.new("1", (1500, 1000)).save(huge, format="PNG")  # 1.5 Mpx in a few kB: over the 1 Mpx limit
    image = ("photo.png", _png(photo))
    return [  # (field, files, fields, status, text)
        ("mask", {"mask": mask}, {}, 400, "needs a regions field"),
        ("regions", {}, {"regions": spec}, 400, "send the mask as a file field"),
        ("mask", {"mask": ("m.png", _png(seven))}, {"regions": spec}, 400,
         "mask m.png: the value 7 has no region in regions (add 7=..."),
        ("mask", {"mask": ("m.png", _png(rgba))}, {"regions": spec}, 400, "mask m.png: has transparency"),
        ("mask", {"mask": ("m.png", deep.getvalue())}, {"regions": spec}, 400, "mask m.png: a 16-bit image"),
        ("mask", {"mask": ("m.png", b"not an image")}, {"regions": spec}, 400, "mask m.png: not an image file"),
        ("mask", {"mask": ("m.png", b"")}, {"regions": spec}, 400, "mask m.png: empty upload"),
        ("mask", {"mask": ("m.png", _png(np.zeros((1, 1), np.uint8)))}, {"regions": spec}, 400,
         "1x1 pixels; a mask needs at least 2x2"),
        ("mask", {"mask": ("m.png", huge.getvalue())}, {"regions": spec}, 413, "mask m.png: 1500x1000"),
        ("regions", {"mask": mask}, {"regions": "0=candy;255=cubism"}, 400, "regions: unknown style 'cubism'"),
        ("regions", {"mask": mask}, {"regions": "0=candy,255=wave"}, 400, "regions: "),
        ("feather", {}, {"feather": "2"}, 400, "softens the edges of a mask"),
        ("feather", {"mask": mask}, {"regions": spec, "feather": "-1"}, 400, "feather must be between 0 and 1000"),
        ("mask", {"mask": mask}, {"regions": spec, "style": "candy"}, 400, "name the styles in regions"),
        ("mask", {}, {"mask": "m.png", "regions": spec}, 400, "send it as a file field"),
        ("strength_map", {"strength_map": ("s.png", _png(_coloured(W, H)))}, {}, 400,
         "strength_map s.png: has colours"),
        ("mask", [("image", image), ("mask", mask), ("mask", mask)], {"regions": spec}, 400, "mask: sent twice"),
    ]


def test_every_bad_map_is_one_line_naming_its_field_and_the_server_goes_on(eager_server, photo):
    client, _ = eager_server
    for field, files, fields, status, text in _bad_requests(photo):
        if isinstance(files, dict):
            files = {"image": ("photo.png", _png(photo))} | files
        r = client.post("/v1/stylize", files=files, data=fields)
        assert r.status_code == status, (field, text, r.text)
        error = r.json()["error"]
        assert error.startswith(field) and text in error, (field, error)
        assert "\n" not in error and "Traceback" not in error and "/tmp" not in error, error
        assert _post(client, photo, style="wave").status_code == 200  # the server goes on
    r = client.post("/v1/stylize", content=_png(photo), params={"regions": "0=candy"},
                    headers={"content-type": "image/png"})  # a raw body: no mask can come with it
    assert r.status_code == 400 and r.json()["error"].startswith("regions: "), r.text


def test_the_map_fields_are_advertised_and_known(eager_server, photo):
    client, _ = eager_server
    styles = client.get("/v1/styles").json()
    assert {"regions", "feather"} <= set(styles["controls"]) and styles["files"] == ["image", "mask", "strength_map"]
    r = _post(client, photo, colour="1")
    assert r.status_code == 400 and "mask, strength_map, regions, feather" in r.json()["error"], r.text


def test_a_map_request_sent_with_plain_ones_leaves_their_answers_alone(eager_server, library, photo):
    """Three at once within the batching window: two plain requests (they may share a batch) and one with a mask
    (a batch of its own); each answer is what it is alone."""
    client, _ = eager_server
    mask_file, spec, feather, regions = _two_styles()
    jobs = [dict(style="candy"), dict(style="wave"), dict(files={"mask": mask_file}, regions=spec, feather=feather)]
    alone = [_pixels(_post(client, photo, **job).content) for job in jobs[:2]] + [_reference(library, photo, regions)]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda job: _post(client, photo, **job), jobs))
    for r, expected in zip(answers, alone):
        assert r.status_code == 200, r.text
        assert np.abs(_pixels(r.content) - expected).max() <= TOLERANCE


def test_the_batcher_runs_each_map_request_alone():
    """Keys that differ only by their maps never share a batch; requests without maps still do."""
    from instyle.serve.batcher import Batcher, Key
    from instyle.serve.regions import Maps

    calls = []

    def run(key, xs, weights):
        calls.append((key.maps, len(xs)))
        return [x[0] for x in xs]

    a, b = Maps(None, False), Maps(None, False)
    keys = [Key(2, 2, 1.0, False, 1.0), Key(2, 2, 1.0, False, 1.0, a), Key(2, 2, 1.0, False, 1.0),
            Key(2, 2, 1.0, False, 1.0, b)]

    async def scenario():
        batcher = Batcher(run, max_batch=4, max_wait_s=30, queue_size=8)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(torch.zeros(1, 3, 2, 2), k) for k in keys))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert sorted(n for _, n in calls) == [1, 1, 2]
    assert [m for m, n in calls if n == 2] == [None] and {id(m) for m, n in calls if n == 1} == {id(a), id(b)}
