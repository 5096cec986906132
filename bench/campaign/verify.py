"""`campaign --stage verify`: the GPU checks, each a step run in its own process with its own time limit.

  env         GPU name, memory, driver, versions
  tests       `pytest -m gpu` (CPU-only tests skip on a CUDA machine; shared data from the bundle)
  parity      4K (dry run: tiny) eager fp32 reference against eager/triton/fused in fp16 and bf16: PSNR,
              max |diff|, NaN/Inf, CUDA-graph replay against the first (eager-launched) call; tiled
              against untiled
  bench       the headline table: eager (channels_last), triton, fused in fp16 at 1024x1024 batch 8,
              1920x1080 and 3840x2160 batch 1, tile off; `compile` (max-autotune) in a step of its own,
              so its compile time cannot starve the others (batch 1 only: one compiled graph; inductor's
              default mode first, then max-autotune)
  throughput  training images/s at 256x256 batch 16: fp32 eager baseline, bf16+channels_last, +fused IN, the
              compiled step (bf16+cl+compile, as the zoo trains; its compile time is the row's warmup_s)
  layers      the fused chain's per-layer table at 4K (where the time goes)
  window      the same bench rows and table with the RGB layer in row windows (first_layer=window)
  modes       per layer and whole chain at 4K: first_layer flat vs window, upsample direct vs phase, conv3x3
              prologue vs tma
              (do_bench medians; modes.py)
  sweep       per conv layer at 4K: the pinned tile and up to five candidates (do_bench medians), the winners
              as a tile table (tiles.json, the format of kernels/tiles.json; sweep.py)
Each step writes `<step>.json` (and its own files) into the stage folder as it finishes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from instyle.metrics import psnr_db

TINY = dict(size=(68, 52), tile=32, iters=1)
FULL = dict(size=(3840, 2160), tile=1024, iters=10)


def _data() -> Path:
    from instyle.paths import data_dir

    return data_dir()


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def env(out: Path, dry: bool) -> dict:
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip()
    else:
        info["gpu"] = None
    return info


def tests(out: Path, dry: bool) -> dict:
    # dry run: collect only (the GPU tests import and parametrize here; they would all skip)
    mode = ["--collect-only"] if dry else ["-n", "3", "--continue-on-collection-errors"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *mode,
           f"--junitxml={out / 'tests.xml'}", "tests"]
    with open(out / "tests.log", "w") as log:  # streamed: a step stopped at its limit keeps what ran
        code = subprocess.run(cmd + ["-rA"], stdout=log, stderr=subprocess.STDOUT).returncode
    lines = [ln for ln in (out / "tests.log").read_text().splitlines() if ln.strip()]
    return {"returncode": code, "summary": (lines or ["(no output)"])[-1], "ok": code == 0}


def _model(out: Path):
    """The trained zoo (its first style) when the zoo stage ran beside this one, else the random
    TransformerNet."""
    from instyle import checkpoint
    from instyle.models.styles import bake, mix_weights

    zoo = out.parent / "zoo" / "zoo" / "styles.safetensors"
    if zoo.is_file():
        model, meta = checkpoint.load(zoo)
        if getattr(model, "styles", 1) > 1:
            model = bake(model, mix_weights(checkpoint.style_names(meta), 0))
        return model.float(), f"{zoo} (style {checkpoint.style_names(meta)[0]})"
    path = _data() / "pretrained" / "random-transformernet.pth"
    return checkpoint.load(path)[0], f"{path.name} (random weights)"


def _photo(size: tuple[int, int]) -> torch.Tensor:
    from instyle.io import read_image, resize_picture, to_tensor

    return to_tensor([resize_picture(read_image(_data() / "content" / "demo" / "hoovertowernight.jpg"), size)])


@torch.no_grad()
def parity(out: Path, dry: bool) -> dict:
    from instyle.engine import Stylizer

    cfg = TINY if dry else FULL
    device = _device()
    model, name = _model(out)
    x = _photo(cfg["size"]).to(device)
    ref = Stylizer(copy.deepcopy(model), backend="eager", precision="fp32", device=device, tile="off")(x)
    rows = []
    for backend in ("eager", "triton", "fused"):
        for precision in ("fp16", "bf16"):
            row = {"backend": backend, "precision": precision}
            try:
                s = Stylizer(copy.deepcopy(model), backend=backend, precision=precision, device=device, tile="off")
                first = s(x).clone()   # eager launches (graphs capture from the second call on)
                y = first if dry else (s(x), s(x))[1]  # the third call: a replay where CUDA graphs are used
            except Exception as e:  # noqa: BLE001 -- a failing backend is a result, not the end of the step
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                rows.append(row)
                continue
            row.update(psnr_db=round(psnr_db(y, ref), 2), max_abs=round(float((y - ref).abs().max()), 3),
                       nonfinite=int((~torch.isfinite(y)).sum()),
                       replay_vs_first_max_abs=float((y - first).abs().max()),
                       replays=getattr(s._run, "replays", None), passed=psnr_db(y, ref) >= 45)
            rows.append(row)
            del s
            if device.type == "cuda":
                torch.cuda.empty_cache()
    whole = Stylizer(copy.deepcopy(model), backend="triton", precision="fp16", device=device, tile="off")(x)
    tiled_s = Stylizer(copy.deepcopy(model), backend="triton", precision="fp16", device=device, tile=cfg["tile"])
    tiled = tiled_s(x)
    return {"model": name, "size": list(cfg["size"]), "device": str(device), "rows": rows,
            "tiled": {"tile": tiled_s.last_tile, "psnr_db_vs_untiled": round(psnr_db(tiled, whole), 2),
                      "max_abs": round(float((tiled - whole).abs().max()), 3),
                      "passed": psnr_db(tiled, whole) >= 50}}


FULL_RUNS = [("1024", "8"), ("1920x1080,3840x2160", "1")]


def _bench(out: Path, dry: bool, backends: str, folder: str, runs=FULL_RUNS, extra=()) -> dict:
    from instyle.bench import cli, report

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    iters = str(TINY["iters"] if dry else FULL["iters"])
    runs = [("64", "1")] if dry else runs
    merged = None
    for sizes, batch in runs:
        sub = out / folder / f"{sizes.replace(',', '_')}-b{batch}"
        args = parser.parse_args(["--backends", backends, "--precisions", "fp16",
                                  "--sizes", sizes, "--batch", batch, "--iters", iters,
                                  "--warmup", "1" if dry else "2",
                                  "--tile", "off", "--out", str(sub), *extra])
        cli.run(args)
        part = json.loads((sub / "results.json").read_text())
        merged = part if merged is None else {**merged, "rows": merged["rows"] + part["rows"]}
    report.write_all(merged, out / folder)
    rows = [{k: r.get(k) for k in ("backend", "precision", "batch", "height", "width", "median_ms", "skipped",
                                    "tiled")} for r in merged["rows"]]
    return {"rows": rows, "folder": folder}


def bench(out: Path, dry: bool) -> dict:
    return _bench(out, dry, "eager,triton,fused", "bench")


def bench_compile(out: Path, dry: bool) -> dict:
    # batch 1 only: with dynamic sizes that is one compiled graph (batch 8 would be a second compile).
    # inductor's default mode first: max-autotune (the backend's CUDA default) has not finished within this
    # step's limit so far, and a step stopped at its limit keeps the folders already written
    fast = _bench(out, dry, "compile", "bench-compile-default", runs=FULL_RUNS[1:], extra=("--backend-option",
                                                                                          "mode=default"))
    return {"default": fast, "max_autotune": _bench(out, dry, "compile", "bench-compile", runs=FULL_RUNS[1:])}


def throughput(out: Path, dry: bool) -> dict:
    from instyle.bench import train_throughput

    rows = "baseline,bf16+cl,bf16+cl+fused,bf16+cl+compile"  # the last: the zoo's compiled step
    argv = ["--rows", rows, "--json", str(out / "throughput-rows.json"), "--vgg", str(_data() / "vgg")]
    argv += ["--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1", "--cpu-smoke",
             "--compile-backend", "aot_eager"] if dry else \
        ["--size", "256", "--batch", "16", "--steps", "15", "--warmup", "5"]
    train_throughput.main(argv)
    return json.loads((out / "throughput-rows.json").read_text())


def layers(out: Path, dry: bool, name: str = "fused_layers.txt", extra=()) -> dict:
    from contextlib import redirect_stdout
    from io import StringIO

    from instyle.bench import fused_layers

    buf = StringIO()
    with redirect_stdout(buf):
        fused_layers.main(["--size", "96x64" if dry else "3840x2160", "--iters", "2" if dry else "10", *extra])
    (out / name).write_text(buf.getvalue())
    return {"table": name, "lines": len(buf.getvalue().splitlines())}


def window(out: Path, dry: bool) -> dict:
    """The fused chain with its RGB layer in row windows (first_layer=window): the bench rows beside the
    default's, and the per-layer profile."""
    bench_rows = _bench(out, dry, "fused", "bench-window", extra=("--backend-option", "first_layer=window"))
    return {"bench": bench_rows, "layers": layers(out, dry, "fused_layers-window.txt", ("--first-layer", "window"))}


def modes(out: Path, dry: bool) -> dict:
    from .modes import DRY_SIZE, FULL_SIZE
    from .modes import modes as run

    model, name = _model(out)
    x = _photo(DRY_SIZE if dry else FULL_SIZE).to(_device())
    return run(out, dry, model, x, name)


def sweep(out: Path, dry: bool) -> dict:
    from .modes import DRY_SIZE, FULL_SIZE
    from .sweep import sweep as run

    model, name = _model(out)
    x = _photo(DRY_SIZE if dry else FULL_SIZE).to(_device())
    return run(out, dry, model, x, name)


# in priority order: the stage deadline cuts from the end (torch.compile's max-autotune last: its compile
# time is the least predictable)
STEPS = {"env": env, "tests": tests, "parity": parity, "bench": bench, "throughput": throughput, "layers": layers,
         "window": window, "modes": modes, "sweep": sweep, "bench_compile": bench_compile}
# seconds each step may take on the GPU machine (a step still running then is stopped, its status "timeout")
LIMITS = {"env": 30, "tests": 240, "parity": 120, "bench": 90, "throughput": 120, "layers": 30, "window": 60,
          "modes": 100, "sweep": 120, "bench_compile": 150}
# the order steps run in: the steps of one group start together (none of them times anything)
GROUPS = [("env",), ("tests", "parity"), ("bench",), ("throughput",), ("layers",), ("window",), ("modes",),
          ("sweep",), ("bench_compile",)]
assert [n for g in GROUPS for n in g] == list(STEPS)
