"""A warm server over the shipped zoo switches among every shipped style, one request each, without building
anything: the one compiled OpenVINO network takes the style as its `style_weights` input (issue 38). What the
switch costs in time is measured by `python -m instyle.bench.vs_peer` (its per-style table), not here."""
from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed", allow_module_level=True)

from tests.serve_live import live_server  # noqa: E402


def test_switching_among_every_shipped_style_builds_nothing(data, tmp_path, monkeypatch):
    import instyle
    from instyle.export import ov_runner
    from instyle.serve.app import Limits, create_app

    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    stylizer = instyle.load(None, backend="openvino", precision="fp32", device="cpu", report=False)
    runner = stylizer._run
    builds = []
    for name in ("graph_of", "convert"):
        real = getattr(ov_runner, name)
        monkeypatch.setattr(ov_runner, name, lambda *a, _real=real, _name=name, **k: builds.append(_name) or
                            _real(*a, **k))
    photo = (data / "content" / "demo" / "chicago.jpg").read_bytes()
    limits = Limits(max_batch=4, max_wait_ms=5, max_pixels=1 << 20, max_upload_mb=1.0, queue=16, timeout_s=60)
    answers = {}
    with live_server(create_app(stylizer, limits)) as url, httpx.Client(base_url=url, timeout=60) as client:
        names = [s["name"] for s in client.get("/v1/styles").json()["styles"]]
        assert len(names) > 1
        for name in names:
            r = client.post("/v1/stylize", content=photo, params={"max_side": 48, "style": name},
                            headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            answers[name] = r.content
    assert builds == [], f"a style switch built {builds}"
    assert stylizer._run is runner
    assert len(set(answers.values())) == len(names), "every style answered with its own picture"
