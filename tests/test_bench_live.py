"""The live bench runs end to end, bounded, and stops by itself: two real servers (batched, then one frame a call),
one and two viewers of 64x48 frames for a second each."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("websockets")


@pytest.mark.slow
def test_the_live_bench_measures_viewers_batched_and_not(data, tmp_path):
    from instyle.bench import live

    assert live.main(["--viewers", "1,2", "--sizes", "64x48", "--duration", "1", "--backend", "eager",
                      "--precision", "fp32", "--max-batch", "2", "--max-wait-ms", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = [r for r in result["rows"] if not r["skipped"]]
    assert [(r["max_batch"], r["viewers"]) for r in rows] == [(2, 1), (2, 2), (1, 1), (1, 2)]
    for row in rows:
        assert row["frames"] >= row["viewers"] and row["fps_per_viewer"] > 0 and row["backend"] == "eager"
        assert 0 < row["server_p50_ms"] <= row["p50_ms"] <= row["p95_ms"] and row["size"] == "64x48"
        assert row["loadavg_before"] and row["loadavg_after"]
    assert rows[2]["mean_batch"] == rows[3]["mean_batch"] == 1.0
    assert result["rows"][-1]["skipped"].startswith("not measured") and result["versions"]["torch"]
    assert "| 2 | eager fp32 | 64x48 | 2 |" in (tmp_path / "results.md").read_text()
