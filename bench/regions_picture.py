"""docs/regions.md's picture and cost: photo | mask | result, and spatial vs plain mix on this CPU.

    python -m instyle.bench.regions_picture --out docs/regions

The picture: a real photo with a sky (../shared/data/content/demo/chicago.jpg), its top third in one style,
the rest in another, and an ellipse around the tallest tower left as the photo, all from simple geometry (no
hand-drawn mask), feathered; one run of the shipped multi-style zoo (eager fp32). The mask panel shows the
regions in flat colours.

The cost: the same Stylizer at --size (square), a plain mix (N x S style weights) against a two-region style
map (per-pixel (gamma, beta) in every layer) and the whole --mask path (Regions: labels resized, feathered,
mapped; built once per image size, then reused) and the building of those maps alone, median of --repeats runs
after one warm-up. The machine may be shared: the load averages before and
after are recorded beside the timings, in bench/results/<date>-<cpu>-regions/ (regions.json + regions.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from instyle.paths import data_dir

SKY, CITY, PHOTO = (70, 110, 220), (60, 60, 60), (250, 250, 250)  # the mask panel's colours
SKY_STYLE, CITY_STYLE, FEATHER = "starry_night", "mosaic", 6.0


def zoo_path() -> Path:
    import instyle

    return Path(instyle.__file__).parent / "zoo" / "styles.safetensors"


def geometry_mask(w: int, h: int) -> Image.Image:
    """Top third: sky; an ellipse around the tower (about 51% across, 8-58% down): the photo; the rest: city."""
    mask = Image.new("RGB", (w, h), CITY)
    draw = ImageDraw.Draw(mask)
    draw.rectangle([0, 0, w, h // 3], fill=SKY)
    cx, cy, rx, ry = 0.512 * w, 0.33 * h, 0.075 * w, 0.26 * h
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=PHOTO)
    return mask


def regions_for(mask: Image.Image):
    from instyle.engine.regions import Regions

    rgb = np.asarray(mask)
    labels = np.zeros(rgb.shape[:2], np.int64)
    labels[(rgb == SKY).all(-1)] = 1
    labels[(rgb == PHOTO).all(-1)] = 2
    return Regions(labels=torch.from_numpy(labels), mixes=(CITY_STYLE, SKY_STYLE, "none"), feather=FEATHER)


def picture(stylizer, photo: Path, out: Path, width: int) -> Path:
    from instyle.io import read_image, resize_picture, to_tensor

    pic = read_image(photo)
    w, h = pic.size
    pic = resize_picture(pic, (width, round(h * width / w)))
    w, h = pic.size
    mask = geometry_mask(w, h)
    y = stylizer(to_tensor([pic]), style_map=regions_for(mask).maps(stylizer.style_names, 1, h, w, "cpu")[0])
    result = y[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    strip = np.concatenate([pic.rgb, np.asarray(mask), result], axis=1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "chicago-regions.jpg"
    Image.fromarray(strip).save(path, quality=85, optimize=True)
    return path


def _median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def cost(stylizer, size: int, repeats: int) -> dict:
    """Plain mix vs style map vs the --mask path at size x size, eager fp32 (medians in ms)."""
    s = len(stylizer.style_names)
    names = stylizer.style_names
    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size) * 255
    w = torch.zeros(1, s)
    w[0, names.index(CITY_STYLE)], w[0, names.index(SKY_STYLE)] = 0.5, 0.5
    m = torch.zeros(1, s, size, size)
    m[:, names.index(SKY_STYLE), : size // 3] = 1
    m[:, names.index(CITY_STYLE), size // 3:] = 1
    regions = regions_for(geometry_mask(size, size))
    load_before = os.getloadavg()
    rows = {}
    for name, fn in (("plain mix (N x S weights)", lambda: stylizer(x, style_weights=w)),
                     ("style map (two regions)", lambda: stylizer(x, style_map=m)),
                     ("--mask path (style map + none blend, maps reused)",
                      lambda: stylizer(x, style_map=regions.maps(names, 1, size, size, "cpu")[0])),
                     ("building the maps (labels resized, feathered, mixed)",
                      lambda: regions_for(geometry_mask(size, size)).maps(names, 1, size, size, "cpu"))):
        median, times = _median_ms(fn, repeats)
        rows[name] = {"median_ms": round(median, 1), "runs_ms": [round(t, 1) for t in times]}
    base = rows["plain mix (N x S weights)"]["median_ms"]
    for row in rows.values():
        row["vs_plain"] = round(row["median_ms"] / base, 3)
    return {"size": size, "repeats": repeats, "rows": rows, "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()]}


def write_results(result: dict, root: Path) -> Path:
    from instyle.bench.devices import slug

    folder = root / f"{result['date']}-{slug(result['cpu'])}-regions"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "regions.json").write_text(json.dumps(result, indent=2) + "\n")
    c = result["cost"]
    lines = [f"# Regions: cost of a per-pixel style map ({result['date']})", "",
             f"{result['cpu']}, {result['threads']} torch threads, torch {result['torch']}, git {result['git_rev']}; "
             f"the shipped zoo ({result['styles']} styles), eager fp32, {c['size']}x{c['size']}, median of "
             f"{c['repeats']} runs after one warm-up.", "",
             f"Load averages (1/5/15 min) before: {c['load_before']}, after: {c['load_after']} on {result['cores']} "
             "cores: the machine was shared, so the absolute times are inflated and noisy; the ratios are what "
             "this run measures.", "",
             "| run | median ms | vs plain mix | runs (ms) |", "|---|---:|---:|---|"]
    for name, row in c["rows"].items():
        lines.append(f"| {name} | {row['median_ms']} | {row['vs_plain']:.2f}x | "
                     f"{', '.join(map(str, row['runs_ms']))} |")
    (folder / "regions.md").write_text("\n".join(lines) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    from instyle.bench.devices import cpu_name, git_rev
    from instyle.engine import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/regions"), help="folder of the picture")
    p.add_argument("--photo", type=Path, default=data_dir() / "content" / "demo" / "chicago.jpg")
    p.add_argument("--width", type=int, default=560, help="width of each panel (default 560)")
    p.add_argument("--size", type=int, default=512, help="side of the timed square input (default 512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--no-picture", action="store_true")
    args = p.parse_args(argv)
    stylizer = load(str(zoo_path()), backend="eager", precision="fp32", device="cpu", tile="off", report=False)
    if not args.no_picture:
        print(picture(stylizer, args.photo, args.out, args.width))
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "git_rev": git_rev(),
              "styles": len(stylizer.style_names), "cost": cost(stylizer, args.size, args.repeats)}
    print(write_results(result, args.results))
    print(json.dumps(result["cost"]["rows"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
