"""Where OpenVINO's CPU time goes in a shipped network: per op type and the slowest layers (its perf counters).

    python -m instyle.bench.ov_profile [--model slim] [--precision fp32|int8] [--size 1024] [--shapes static|dynamic]
                                       [--out FILE.json]

fp32 profiles the graph the openvino backend builds (two-pass instance norms); int8 the shipped int8 IR beside
the zoo file (export/zoo_int8.py), whatever its gate said. One warm-up call, then the median of --iters calls;
the counters are those of the last call. Prints a table; --out writes the same as JSON with the CPU, versions and
load averages.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time
from pathlib import Path


def profile(model: str, precision: str, size: int, iters: int, shapes: str = "static") -> dict:
    import numpy as np
    import openvino as ov

    from instyle import checkpoint
    from instyle.export import ov_runner, zoo_int8

    path, _ = checkpoint.resolve_style(model)
    net, meta = checkpoint.load(path)
    core = ov.Core()
    if precision == "int8":
        xml = zoo_int8.files(path)[0]
        if not xml.is_file():
            raise SystemExit(f"{path}: no shipped int8 IR beside it ({xml.name}); build it: instyle quantize --ship")
        graph = core.read_model(str(xml))
    else:
        graph = ov_runner.convert(net.float().eval(), precision)
    feed = {ov_runner.INPUT_NAME: (np.random.default_rng(0).random((1, 3, size, size)) * 255).astype(np.float32)}
    styles = len(checkpoint.style_names(meta))
    if styles > 1:
        weights = np.zeros((1, styles), np.float32)
        weights[0, 0] = 1
        feed[ov_runner.STYLE_INPUT] = weights
    if shapes == "static":  # what the runner compiles (export/ov_runner.py OpenVINORunner)
        graph.reshape({name: list(v.shape) for name, v in feed.items()})
    config = dict(ov_runner.compile_config(precision, ov_runner.threads()), PERF_COUNT=True)
    request = core.compile_model(graph, "CPU", config).create_infer_request()
    request.infer(feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        request.infer(feed)
        times.append((time.perf_counter() - start) * 1e3)
    by_type: collections.Counter = collections.Counter()
    layers = []
    for p in request.get_profiling_info():
        ms = p.real_time.total_seconds() * 1e3
        by_type[p.node_type] += ms
        layers.append({"ms": round(ms, 2), "type": p.node_type, "exec": p.exec_type, "name": p.node_name})
    return {"model": path.name, "precision": precision, "shapes": shapes, "size": size,
            "median_ms": round(statistics.median(times), 1),
            "counted_ms": round(sum(by_type.values()), 1),
            "by_type_ms": {k: round(v, 1) for k, v in by_type.most_common()},
            "slowest": sorted(layers, key=lambda r: -r["ms"])[:15]}


def main(argv: list[str] | None = None) -> int:
    from instyle.bench.devices import cpu_name, git_rev, now, versions

    p = argparse.ArgumentParser(prog="python -m instyle.bench.ov_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="slim", help="shipped file or style name, or a path (default slim)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"))
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--shapes", default="static", choices=("static", "dynamic"),
                   help="compile for the one input shape, as the backend does (default), or with dynamic N/H/W")
    p.add_argument("--out", type=Path, help="write the profile as JSON here")
    a = p.parse_args(argv)
    before = [round(v, 2) for v in os.getloadavg()]
    r = profile(a.model, a.precision, a.size, a.iters, a.shapes)
    r.update(cpu=cpu_name(), date=now(), git_rev=git_rev(), versions=versions(), load_before=before,
             load_after=[round(v, 2) for v in os.getloadavg()])
    print(f"{r['model']} {r['precision']} {r['shapes']} {r['size']}²: median {r['median_ms']} ms, "
          f"counters {r['counted_ms']} ms")
    for kind, ms in list(r["by_type_ms"].items())[:10]:
        print(f"  {kind:<16} {ms:8.1f} ms  {100 * ms / r['counted_ms']:5.1f} %")
    for layer in r["slowest"][:8]:
        print(f"  {layer['ms']:8.1f} ms  {layer['type']:<12} {layer['exec']:<24} {layer['name'][:60]}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
