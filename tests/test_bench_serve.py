"""The serve load test runs end to end, bounded, and stops by itself: two real servers (batched, then one image a
call) under a few clients for two seconds each."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.mark.slow
def test_the_load_test_compares_batched_with_one_image_a_call(data, tmp_path):
    from instyle.bench import serve

    rc = serve.main(["--clients", "4", "--duration", "2", "--warmup", "0.5", "--size", "64", "--backend", "eager",
                     "--precision", "fp32", "--max-batch", "4", "--max-wait-ms", "50", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert rc == 0
    batched, single = result["rows"]
    assert (batched["max_batch"], single["max_batch"]) == (4, 1)
    for row in (batched, single):
        assert row["errors"] == 0 and row["ok"] == row["requests"] > 0 and row["statuses"] == {"200": row["ok"]}
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        assert row["loadavg_before"] and row["backend"] == "eager"
    assert single["mean_batch"] == 1.0
    assert 1.0 < batched["mean_batch"] <= 4  # four clients and a 50 ms window: batches form
    assert result["image"] == "64x43"
    assert "| 4 | eager fp32 |" in (tmp_path / "results.md").read_text()
