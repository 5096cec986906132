"""Calibrating the zoo's loss weights on the CPU: short fine-tunes of the shipped zoo, scored by the gate.

    python -m instyle.bench.zoo_sweep --out DIR [--runs 1e6:1e3,3e6:1e3,1e7:1e3,3e6:0] [--steps 150]

Each run is STYLE_WEIGHT:LATTICE_WEIGHT: it continues the shipped zoo (train/zoo.py: train with init) on every
style image of the shared data (a style the zoo lacks starts from its mean row) at 128 px, batch 4, for --steps
steps, with the per-style Gram balance, that global style weight and that stride-lattice weight; then gates it
(train/style_metric.py: gram ratio, content, lattice) on --photos held-out photos at 384 px, beside the shipped
zoo gated on the same photos. Writes DIR/zoo-sweep.json after every run and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def _runs(text: str) -> list[tuple[float, float]]:
    runs = []
    for item in text.split(","):
        style, _, lattice = item.strip().partition(":")
        runs.append((float(style), float(lattice or 0)))
    return runs


def summary(verdict: dict) -> dict:
    """Medians over styles of a gate's per-style medians, and the worst style's ratio."""
    rows = verdict["styles"].values()
    return {"ratio_median": round(statistics.median(r["gram_ratio_median"] for r in rows), 4),
            "ratio_worst": round(max(r["gram_ratio_median"] for r in rows), 4),
            "content_median": round(statistics.median(r["content_median"] for r in rows), 4),
            "lattice_median": round(statistics.median(r["lattice_median"] for r in rows), 2),
            "passed": sum(r["passed"] for r in rows), "styles": len(verdict["styles"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.zoo_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", default="1e6:1e3,3e6:1e3,1e7:1e3,3e6:0",
                   help="comma-separated STYLE_WEIGHT:LATTICE_WEIGHT pairs (default %(default)s)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=50, help="steps of LR warm-up (default %(default)s)")
    p.add_argument("--photos", type=int, default=8, help="held-out photos to gate on (default %(default)s)")
    p.add_argument("--init", type=Path, help="the zoo to continue (default: the shipped one)")
    a = p.parse_args(argv)
    import torch

    from instyle.bench.devices import cpu_name
    from instyle.paths import ZOO_DIR, data_dir
    from instyle.train import zoo as Z

    data = data_dir()
    init = a.init or ZOO_DIR / "styles.safetensors"
    styles = Z.style_files(data / "styles")
    a.out.mkdir(parents=True, exist_ok=True)
    _, held = Z.split_photos(data / "content" / "train", a.out)
    photos = held[:a.photos]
    result_path = a.out / "zoo-sweep.json"
    record = {"init": str(init), "styles": [s.stem for s in styles], "steps": a.steps, "warmup": a.warmup,
              "image_size": 128, "batch": 4, "style_size": 512, "gate_side": 384,
              "photos": [p.name for p in photos], "machine": platform.processor() or platform.machine(),
              "cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    t0 = time.perf_counter()
    baseline = Z.gate(init, data, photos, side=384, device="cpu")
    record["baseline"] = {"gate_s": round(time.perf_counter() - t0, 1), "summary": summary(baseline),
                          "styles": baseline["styles"]}
    print(f"{'shipped':<14} {'':>6}    {_row(summary(baseline))}", flush=True)
    result_path.write_text(json.dumps(record, indent=2))
    for style_weight, lattice_weight in _runs(a.runs):
        tag = f"s{style_weight:g}-l{lattice_weight:g}"
        load = os.getloadavg()
        t0 = time.perf_counter()
        trained = Z.train(a.out / tag, data, budget=None, iterations=a.steps, image_size=128, batch=4,
                          model_config={}, styles=styles, workers=1, device="cpu", style_weight=style_weight,
                          lattice_weight=lattice_weight, init=init, warmup=a.warmup, checkpoint_every=10**9)
        seconds = time.perf_counter() - t0
        verdict = Z.gate(trained["model"], data, photos, side=384, device="cpu")
        record["runs"].append({"style_weight": style_weight, "lattice_weight": lattice_weight,
                               "train_s": round(seconds, 1), "loadavg_before": [round(x, 2) for x in load],
                               "final_losses": trained["final_losses"], "summary": summary(verdict),
                               "styles": verdict["styles"]})
        result_path.write_text(json.dumps(record, indent=2))
        print(f"{tag:<14} {seconds:6.0f} s  {_row(summary(verdict))}", flush=True)
    return 0


def _row(s: dict) -> str:
    return (f"ratio median {s['ratio_median']:.3f} worst {s['ratio_worst']:.3f}  content {s['content_median']:.2f}  "
            f"lattice {s['lattice_median']:.1f}  passed {s['passed']}/{s['styles']}")


if __name__ == "__main__":
    raise SystemExit(main())
