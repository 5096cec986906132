"""Reproduce Ulyanov, Vedaldi & Lempitsky (2016) on this machine: instance vs batch norm, reflect vs zero padding.

    python -m instyle.bench.reproduce --out bench/results/DATE-reproduction [--steps 800] [--runs ...]

Every run trains one style from scratch with the same seed, photos, crop size, batch, step count and loss
weights; only the generator differs (RUNS). Each run is resumable (a checkpoint every 100 steps: run the same
command again after an interruption) and a finished one is skipped. Then every model is scored on held-out
photos (train/zoo.py: the last 20 training photos, never trained on) with the gate's metric
(train/style_metric.py: Gram ratio, content distance, lattice) at several sizes, batch norm evaluated as the
paper's baseline is, with its running statistics; and by the border figure (border_error). results.json,
table.md, the loss curves and the picture grids (bench/reproduce_figures.py) go into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# name -> (arch, constructor arguments); the paper's comparisons are pairs of these
RUNS = {
    "johnson-in": ("johnson", {"norm": "instance", "padding": "reflect"}),
    "johnson-bn": ("johnson", {"norm": "batch", "padding": "reflect"}),
    "johnson-in-zero": ("johnson", {"norm": "instance", "padding": "zero"}),
    "pyramid-in": ("pyramid", {"norm": "instance", "padding": "reflect"}),
    "pyramid-bn": ("pyramid", {"norm": "batch", "padding": "reflect"}),
}
DEFAULT_RUNS = "johnson-in,johnson-bn,johnson-in-zero,pyramid-in,pyramid-bn"


def train_run(name: str, out: Path, data: Path, style: Path, *, steps: int, size: int, batch: int,
              seed: int = 0) -> Path:
    """Train (or resume, or skip when finished) run `name`; returns its model file."""
    from instyle.checkpoint import read_metadata
    from instyle.train import zoo as Z
    from instyle.train.state import state_path
    from instyle.train.trainer import TrainConfig, Trainer

    model = out / name / "model.safetensors"
    if model.is_file() and json.loads(read_metadata(model).get("training") or "{}").get("iterations", 0) >= steps:
        return model
    loss, vgg_info = Z.perceptual_loss(data, [style], lattice=0)  # calibrated weights; the paper had no lattice
    train_dir, _ = Z.split_photos(data / "content" / "train", out)
    arch, config = RUNS[name]
    resume = state_path(model).is_file()
    cfg = TrainConfig(style=[str(style)], out=str(model), data=str(train_dir), arch=arch, model_config=config,
                      image_size=size, batch_size=batch, iterations=steps, seed=seed, workers=1,
                      checkpoint_every=100, sample_every=0, log_every=25, device="cpu", progress=False,
                      resume=resume, overwrite=not resume, warmup=0, vgg_info=vgg_info)
    print(f"{name}: {steps} steps of {batch} at {size} px" + (" (resumed)" if resume else ""), flush=True)
    t0 = time.perf_counter()
    Trainer(cfg, loss).fit()
    print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


@torch.no_grad()
def border_error(model, photos: list[Path], *, side: int, margin: int = 64, band: int = 16) -> dict:
    """How far the output near the image border is from what the network paints there with context.

    Each photo is stylized twice: a side x side centre crop on its own, and the same crop with `margin` more
    photo around it (then cut back). Away from the border the two agree up to the slightly different
    instance statistics; near it, the crop alone shows what the padding does. Returns the mean absolute
    difference (0..255) on a `band`-pixel frame along the border, on the interior, and the border's excess
    over the interior (batch norm at test time has no image statistics: its interior difference is ~0)."""
    from instyle.train.zoo import photo_batch

    bands, inner = [], []
    for p in photos:
        big = photo_batch([p], side + 2 * margin, "cpu")
        alone = model(big[..., margin:-margin, margin:-margin]).clamp(0, 255)
        context = model(big).clamp(0, 255)[..., margin:-margin, margin:-margin]
        diff = (alone - context).abs().mean(dim=1)[0]
        frame = torch.ones_like(diff, dtype=torch.bool)
        frame[band:-band, band:-band] = False
        bands.append(float(diff[frame].mean()))
        inner.append(float(diff[~frame].mean()))
    b, i = sum(bands) / len(bands), sum(inner) / len(inner)
    return {"band": round(b, 3), "interior": round(i, 3), "excess": round(b - i, 3), "side": side,
            "margin": margin, "band_px": band}


def flatness(csv_path: Path) -> dict:
    """How flat a run's total loss is at the end: the mean over the last quarter of the steps against the
    quarter before it (relative drop; under 5 % counts as flattened)."""
    import csv

    with open(csv_path, newline="") as f:
        rows = [(int(r["step"]), float(r["total"])) for r in csv.DictReader(f) if r.get("total")]
    last = rows[-1][0]
    q3 = [v for s, v in rows if last * 0.75 < s <= last]
    q2 = [v for s, v in rows if last * 0.5 < s <= last * 0.75]
    if not q3 or not q2:
        return {"last_quarter_drop": None, "flattened": None}
    drop = 1 - (sum(q3) / len(q3)) / (sum(q2) / len(q2))
    return {"last_quarter_drop": round(drop, 4), "flattened": drop < 0.05}


def score_run(model_path: Path, data: Path, style: Path, photos: list[Path], sides: list[int]) -> dict:
    """The gate's figures at each side (the first side on every photo, larger ones on up to 4) and the border."""
    from instyle import checkpoint
    from instyle.train import zoo as Z

    name = checkpoint.style_names(checkpoint.read_metadata(model_path))[0]
    out = {"gate": {}}
    for i, side in enumerate(sides):
        chosen = photos if i == 0 else photos[:4]
        g = Z.gate(model_path, data, chosen, side=side, device="cpu", style_images={name: style})
        out["gate"][str(side)] = {"photos": len(chosen), **g["styles"][name]}
    model, _ = checkpoint.load(model_path)
    out["border"] = border_error(model.float().eval(), photos[:8], side=sides[0])
    return out


def table(results: dict) -> str:
    """Markdown: one row per run."""
    sides = list(next(iter(results.values()))["gate"])
    head = "| run | " + " | ".join(f"ratio {s}" for s in sides) + f" | content {sides[0]} | lattice {sides[0]} | " \
           "border band | interior | border excess | last-quarter drop |"
    lines = [head, "|---" + "|---:" * (len(sides) + 6) + "|"]
    for name, r in results.items():
        g = r["gate"]
        flat = r["curve"]["last_quarter_drop"]
        lines.append(f"| {name} | " + " | ".join(f"{g[s]['gram_ratio_median']:.3f}" for s in sides)
                     + f" | {g[sides[0]]['content_median']:.2f} | {g[sides[0]].get('lattice_median', 0):.1f} | "
                     f"{r['border']['band']:.2f} | {r['border']['interior']:.2f} | {r['border']['excess']:+.2f} | "
                     + ("–" if flat is None else f"{100 * flat:.1f} %") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from instyle.bench.devices import cpu_name
    from instyle.paths import data_dir
    from instyle.train import zoo as Z
    from instyle.train.state import git_rev

    from . import reproduce_figures as figures

    p = argparse.ArgumentParser(prog="python -m instyle.bench.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results folder (runs, tables, figures)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, of {', '.join(RUNS)} (default: all)")
    p.add_argument("--style", default="candy", help="style image name in the data's styles/ (default %(default)s)")
    p.add_argument("--steps", type=int, default=800, help="training steps of every run (default %(default)s)")
    p.add_argument("--size", type=int, default=128, help="training crop side (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default %(default)s)")
    p.add_argument("--photos", type=int, default=12, help="held-out photos to score on (default %(default)s)")
    p.add_argument("--sides", default="384,768,1024", help="scoring sizes; the first is the main one")
    a = p.parse_args(argv)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {', '.join(unknown)} (known: {', '.join(RUNS)})")
    sides = [int(s) for s in a.sides.split(",")]
    data = data_dir()
    style = next((p for p in Z.style_files(data / "styles") if p.stem == a.style), None)
    if style is None:
        raise SystemExit(f"--style {a.style}: not in {data / 'styles'}")
    a.out.mkdir(parents=True, exist_ok=True)
    models = {r: train_run(r, a.out, data, style, steps=a.steps, size=a.size, batch=a.batch) for r in runs}
    _, held = Z.split_photos(data / "content" / "train", a.out)
    photos = held[:a.photos]
    t0 = time.perf_counter()
    results = {}
    for r, m in models.items():
        results[r] = {**score_run(m, data, style, photos, sides), "curve": flatness(m.with_name("model.log.csv"))}
        print(f"{r}: scored", flush=True)
    meta = {"cpu": cpu_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "git_rev": git_rev(),
            "style": style.name, "steps": a.steps, "size": a.size, "batch": a.batch, "photos": [p.name for p in photos],
            "sides": sides, "score_s": round(time.perf_counter() - t0, 1)}
    (a.out / "results.json").write_text(json.dumps({"setup": meta, "runs": results}, indent=2))
    (a.out / "table.md").write_text(table(results))
    figures.curves({r: m.with_name("model.log.csv") for r, m in models.items()}, a.out / "curves.png")
    figures.pictures(models, photos, a.out, sides=sides)
    print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
