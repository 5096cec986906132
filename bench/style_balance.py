"""Choosing the zoo's global style weight on the CPU: short two-style runs, scored by the gate's metric.

    python -m instyle.bench.style_balance --out DIR [--weights 1e5,3e5,1e6] [--steps 200]

Each run trains one conditional-IN Johnson net on two styles of very different Gram magnitude (udnie, mosaic)
at 128 px, batch 4, for --steps steps, with the per-style Gram balance and one global weight (plus one run of
the old recipe: no balance, weight 0.3), then gates it with train/style_metric.py on held-out photos at 384 px
(the campaign's split: photos training never sees). Writes DIR/style-balance.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

STYLES = ("udnie", "mosaic")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.style_balance", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", default="1e5,3e5,1e6", help="global weights of the balanced runs")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--photos", type=int, default=4, help="held-out photos to gate on")
    p.add_argument("--no-baseline", action="store_true", help="skip the unbalanced run (weight 0.3)")
    a = p.parse_args(argv)
    import torch

    from instyle.paths import data_dir
    from instyle.train import zoo as Z

    data = data_dir()
    styles = [data / "styles" / f"{n}.jpg" for n in STYLES]
    runs = [("gram", float(w)) for w in a.weights.split(",") if w.strip()]
    if not a.no_baseline:
        runs.insert(0, ("off", 0.3))
    a.out.mkdir(parents=True, exist_ok=True)
    result_path = a.out / "style-balance.json"
    record = {"styles": list(STYLES), "steps": a.steps, "image_size": 128, "batch": 4, "style_size": 512,
              "gate_side": 384, "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    for balance, weight in runs:
        tag = f"{balance}-{weight:g}"
        load = os.getloadavg()
        t0 = time.perf_counter()
        trained = Z.train(a.out / tag, data, budget=None, iterations=a.steps, image_size=128, batch=4,
                          model_config={}, styles=styles, workers=1, device="cpu", style_weight=weight,
                          balance=balance, checkpoint_every=10**9)
        seconds = time.perf_counter() - t0
        _, held = Z.split_photos(data / "content" / "train", a.out / tag)
        verdict = Z.gate(trained["model"], data, held[:a.photos], side=384, device="cpu")
        record["runs"].append({"balance": balance, "style_weight": weight, "train_s": round(seconds, 1),
                               "loadavg_before": [round(x, 2) for x in load],
                               "final_losses": trained["final_losses"], "photos": verdict["photos"],
                               "gate": verdict["styles"]})
        result_path.write_text(json.dumps(record, indent=2))
        row = "  ".join(f"{n} ratio {r['gram_ratio_median']:.3f} content {r['content_median']:.3f}"
                        for n, r in verdict["styles"].items())
        print(f"{tag:<12} {seconds:6.0f} s  {row}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
