"""instyle bench: a tiny CPU run end to end, the FLOP counter against the layer shapes, skipped rows,
--compare, Ctrl-C, usage errors, and the timing (instyle/timing.py) and PSNR (instyle/metrics.py) helpers."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from instyle import checkpoint
from instyle.bench import devices, flops, harness
from instyle.cli import main
from instyle.models import JohnsonNet

ROW_KEYS = ("backend", "precision", "batch", "height", "width", "median_ms", "p10_ms", "p90_ms", "images_per_s",
            "mpx_per_s", "peak_mem_mb", "tflops", "pct_peak", "bound_ms", "skipped")
TIMED = ("median_ms", "p10_ms", "p90_ms", "images_per_s", "mpx_per_s", "peak_mem_mb", "tflops")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A narrow JohnsonNet on disk (fixed seed, so the ONNX export cache hits on later runs)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    checkpoint.save(JohnsonNet(width=8, blocks=1), path, style="tiny")
    return path


@pytest.fixture(scope="module")
def smoke(small_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--model", str(small_model), "--backends", "eager,onnxruntime,tensorrt",
            "--sizes", "64,128x96", "--batch", "1,2", "--iters", "3", "--warmup", "1", "--threads", "1",
            "--out", str(out)]
    assert main(argv) == 0
    return out


def test_smoke_run_writes_consistent_outputs(smoke):
    data = json.loads((smoke / "results.json").read_text())
    assert data["device"]["kind"] == "cpu" and data["device"]["name"]
    assert {"peak_tflops", "peak_gbps"} <= set(data["device"])
    assert data["versions"]["torch"] == torch.__version__ and data["date"] and data["model"]["name"] == "tiny"
    rows = data["rows"]
    assert len(rows) == 3 * 2 * 2  # backends x sizes x batches, fp32 on CPU
    assert all(set(ROW_KEYS) <= set(r) for r in rows)
    eager = [r for r in rows if r["backend"] == "eager"]
    assert {(r["height"], r["width"], r["batch"]) for r in eager} == {(64, 64, 1), (64, 64, 2), (96, 128, 1),
                                                                      (96, 128, 2)}
    measured = [r for r in rows if not r["skipped"]]
    assert eager and all(r in measured for r in eager)
    for r in measured:
        assert all(r[k] > 0 for k in TIMED), r
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["warmup_s"] >= 0 and r["bound_ms"] is None and r["pct_peak"] is None  # CPU: peak unknown
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
    for r in rows:
        if r["skipped"]:
            assert r["median_ms"] is None and len(r["skipped"]) > 10  # a reason, not a flag
    trt = [r for r in rows if r["backend"] == "tensorrt"]
    assert all(r["skipped"] for r in trt)  # no TensorRT on a CPU machine

    with open(smoke / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and set(ROW_KEYS) <= set(table[0])
    for line, r in zip(table, rows):
        assert line["backend"] == r["backend"] and int(line["height"]) == r["height"]
        if r["median_ms"] is not None:
            assert float(line["median_ms"]) == pytest.approx(r["median_ms"])

    md = (smoke / "results.md").read_text()
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
    assert "not measured: " in md and "(CPU" in md

    png = (smoke / "latency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_onnxruntime_rows_are_measured_or_say_why(smoke):
    rows = [r for r in json.loads((smoke / "results.json").read_text())["rows"] if r["backend"] == "onnxruntime"]
    assert len(rows) == 4
    for r in rows:  # the backend may not be built yet: then every row carries the reason
        assert (r["median_ms"] or 0) > 0 or r["skipped"]


def test_compare_prints_ratios(smoke, tmp_path, capsys):
    data = json.loads((smoke / "results.json").read_text())
    for r in data["rows"]:
        if r["median_ms"]:
            r["median_ms"] /= 2  # B twice as fast
    (tmp_path / "b.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["bench", "--compare", str(smoke / "results.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "2.00x faster" in out and "not comparable (skipped)" in out
    assert "B is 2.00x the speed of A" in out


def test_flop_count_matches_layer_shapes():
    """Default JohnsonNet (pytorch/examples TransformerNet): 2 x MACs per output pixel from the shapes."""
    c1, c2, c3, k9, k3 = 32, 64, 128, 81, 9
    macs = (3 * c1 * k9            # conv1 9x9 at full size
            + c1 * c2 * k3 / 4     # conv2 stride 2
            + c2 * c3 * k3 / 16    # conv3 stride 2
            + 10 * c3 * c3 * k3 / 16  # 5 residual blocks x 2 convs at 1/4 x 1/4
            + c3 * c2 * k3 / 4     # deconv1: nearest x2, conv at 1/2 x 1/2
            + c2 * c1 * k3         # deconv2: nearest x2, conv at full size
            + c1 * 3 * k9)         # deconv3 9x9
    analytic = 2 * macs
    assert analytic == pytest.approx(0.31e6, rel=0.01)
    counted = flops.count(JohnsonNet())
    assert counted["conv"] == pytest.approx(analytic, rel=0.02)
    assert flops.johnson_analytic() == pytest.approx(analytic, rel=1e-9)
    assert 0 < counted["other"] < 0.02 * counted["conv"]
    # transposed upsampling: the counter sees ConvTranspose2d, the analytic form agrees
    assert flops.count(JohnsonNet(upsampling="transposed"))["conv"] == pytest.approx(
        flops.johnson_analytic(upsampling="transposed"), rel=1e-9)


def test_bound_and_peaks():
    h100 = devices.lookup_peaks("NVIDIA H100 80GB HBM3")
    assert h100["fp16"] == 989 and h100["gbps"] == 3350
    assert devices.lookup_peaks("NVIDIA L40S") is None and devices.lookup_peaks("Intel Xeon") is None
    assert devices.peak_tflops_for(h100, "fp32") == h100["tf32"]
    # 1 TFLOP at 989 TFLOP/s vs 1 GB at 3350 GB/s: compute-bound
    assert flops.bound_ms(1e12, 1e9, 989, 3350) == pytest.approx(1e3 / 989)
    assert flops.bound_ms(1e12, 1e9, None, None) is None


def test_rates_and_bound_of_one_row():
    """With a (made-up) known peak the row gets a bound and a % of peak that follow from its own numbers."""
    from instyle.engine import Stylizer

    model = JohnsonNet(width=4, blocks=0)
    info = {"peak_tflops": {"fp32": 0.5, "tf32": 1.0}, "peak_gbps": 10.0}
    row = harness.measure(Stylizer(model), 1, 30, 40, iters=2, warmup=0, device=torch.device("cpu"),
                          conv_flops_per_px=1e6, weight_count=100, device_info=info)
    flop = 1e6 * 32 * 40  # padded to the stride multiple (4): 30 -> 32
    assert row["gflop"] == pytest.approx(flop / 1e9)
    assert row["tflops"] == pytest.approx(flop / row["median_ms"] / 1e9)
    assert row["pct_peak"] == pytest.approx(100 * row["tflops"] / 1.0)  # fp32 rows use the TF32 peak
    min_bytes = 2 * 3 * 30 * 40 * 4 + 100 * 4
    assert row["bound_ms"] == pytest.approx(max(flop / 1e12, min_bytes / 10e9) * 1e3)
    assert row["mpx_per_s"] == pytest.approx(30 * 40 / 1e6 / (row["median_ms"] / 1e3))


def test_unavailable_backend_becomes_skipped_row():
    m = harness.Matrix(backends=["tensorrt"], precisions=["fp32"], sizes=[(16, 16)], batches=[1], iters=1, warmup=0)
    result = harness.run(JohnsonNet(width=4, blocks=0), m, torch.device("cpu"), {"peak_tflops": None},
                         progress=False)
    (row,) = result.rows
    assert row["skipped"] and "tensorrt" in row["skipped"] and row["median_ms"] is None


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_rows_fp32_and_bf16_with_first_call_apart(small_model, tmp_path, monkeypatch, data):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    argv = ["bench", "--model", str(small_model), "--backends", "eager,openvino", "--sizes", "40x24",
            "--iters", "2", "--warmup", "2", "--out", str(tmp_path / "out"),
            "--image", str(data / "content" / "demo" / "chicago.jpg")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [(r["backend"], r["precision"]) for r in rows] == [("eager", "fp32"), ("openvino", "fp32"),
                                                              ("openvino", "bf16")]
    for r in rows:
        if r["skipped"]:  # bf16 on a CPU without BF16
            assert r["precision"] == "bf16" and "runs fp32" in r["skipped"]
            continue
        assert 0 < r["first_call_s"] <= r["warmup_s"] and r["setup_s"] > 0 and r["median_ms"] > 0
        if r["backend"] == "eager":
            assert r["psnr_vs_eager_db"] is None
        else:  # the same photo through openvino: fp32 all but equal, bf16 close
            assert r["psnr_vs_eager_db"] > (80 if r["precision"] == "fp32" else 35)
    assert "first call s" in (tmp_path / "out" / "results.md").read_text()


def test_ctrl_c_keeps_measured_rows(monkeypatch, tmp_path):
    real, calls = harness.measure, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "measure", interrupt_second)
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    checkpoint.save(JohnsonNet(width=4, blocks=0), path, style="m")
    argv = ["bench", "--model", str(path), "--backends", "eager", "--sizes", "16,24,32", "--iters", "1",
            "--warmup", "0", "--out", str(tmp_path / "out")]
    assert main(argv) == 130
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["skipped"] for r in rows] == [None, "interrupted", "interrupted"]
    assert "Interrupted" in (tmp_path / "out" / "results.md").read_text()
    assert rows[0]["median_ms"] > 0


@pytest.mark.parametrize("args", [
    ["--sizes", "12x"], ["--sizes", "0"], ["--sizes", "axb"], ["--backends", "eager,warp"],
    ["--precisions", "fp8"], ["--batch", "0"], ["--batch", "two"], ["--iters", "0"],
    ["--backend-option", "mode"], ["--backends", "eager", "--backend-option", "prenorm=all"],
])
def test_bad_arguments_exit_2(args, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err


def test_parse_sizes_is_width_by_height():
    from instyle.bench.cli import parse_sizes

    assert parse_sizes("256, 1920x1080") == [(256, 256), (1080, 1920)]


def test_psnr_db_one_definition():
    from instyle.metrics import psnr_db

    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    assert psnr_db(a, b) == float("inf")
    b[0, 0, 0, 0] = 255  # MSE = 255^2 / 96 over the whole batch
    assert psnr_db(a, b) == pytest.approx(10 * torch.log10(torch.tensor(96.0)).item())
    assert psnr_db(a, b / 255, peak=1.0) == pytest.approx(psnr_db(a, b))
    assert psnr_db(a.numpy().astype("uint8"), b.numpy().astype("uint8")) == pytest.approx(psnr_db(a, b))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_db(a, b[:1])


def test_timing_summary_is_numpy_linear_and_calls_are_counted():
    from instyle import timing

    ms = [4.0, 1.0, 3.0, 2.0]
    assert timing.summary(ms) == {"median_ms": 2.5, "p10_ms": pytest.approx(1.3), "p90_ms": pytest.approx(3.7)}
    calls = []
    assert len(timing.time_calls(calls.append, 1, n=3, device="cpu")) == 3 and calls == [1, 1, 1]
    out, seconds = timing.wall(lambda: len(calls), calls=2)
    assert out == 3 and seconds >= 0
    assert timing.wall(calls.append, 2, calls=0) == (None, pytest.approx(0, abs=1e-3)) and len(calls) == 3


def test_timing_on_cuda_records_events_around_each_call_and_syncs(monkeypatch):
    """The CUDA path with stand-in events: every call between its own pair, one sync before the first
    and one after the last (no device needed)."""
    from instyle import timing

    log = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = len(log)
            log.append("record")

        def elapsed_time(self, end):
            return float(end.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    ms = timing.time_calls(lambda x: log.append(x), "call", n=2, device="cuda")
    assert log == ["sync", "record", "call", "record", "record", "call", "record", "sync"]
    assert ms == [2.0, 2.0]



def test_backend_options_reach_each_backend_that_takes_them(monkeypatch, tmp_path):
    """--backend-option: each backend of the matrix gets the options it takes; the run records them."""
    from instyle.engine import backends

    seen = {}

    def recorder(name):
        def make(model, device, dtype, **kw):
            seen[name] = kw
            return lambda x: model(x.to(dtype))
        return make

    for name in ("triton", "compile"):
        monkeypatch.setattr(backends.TABLE[name], "factory", recorder(name))
        monkeypatch.setattr(backends.TABLE[name], "devices", ("cpu", "cuda"))
        monkeypatch.setattr(backends.TABLE[name], "requires", ())
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    checkpoint.save(JohnsonNet(width=4, blocks=0), path, style="m")
    argv = ["bench", "--model", str(path), "--backends", "triton,compile", "--sizes", "16", "--iters", "1",
            "--warmup", "0", "--precisions", "fp32", "--out", str(tmp_path / "out"),
            "--backend-option", "mode=default", "--backend-option", "graphs=off"]
    assert main(argv) == 0
    assert seen == {"triton": {}, "compile": {"mode": "default"}}  # graphs: the table's wrap takes it
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["matrix"]["options"] == {"triton": {"graphs": False}, "compile": {"mode": "default", "graphs": False}}
    assert all(r["skipped"] is None for r in result["rows"])
    assert "Options of compile: mode=default, graphs=False." in (tmp_path / "out" / "results.md").read_text()
