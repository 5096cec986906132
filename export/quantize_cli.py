"""`instyle quantize`: build and cache the int8 OpenVINO model of a network ahead of time (a multi-style one once,
for all its styles) and print its quality report per style (PSNR and max |Δ| vs eager fp32 on held-out photos).
`auto` uses int8 for the styles that passed the gate (export/ov_per_style.py). `--ship` writes the model of the
shipped zoo file into the package instead (export/zoo_int8.py), which `auto` runs on a CPU with VNNI/AMX with no
step of the user's.
Heavy imports happen inside run()."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .int8_recipe import CHECK_SIDE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="shipped style name or .safetensors/.pth path (default: the shipped styles)")
    parser.add_argument("--ship", action="store_true",
                        help="write the shipped zoo file's int8 model into the package (instyle/zoo/), not the cache")
    parser.add_argument("--crops", type=int, help="calibration crops (default: the recipe's, 128)")
    parser.add_argument("--side", type=int, help="calibration crop side in pixels (default: the recipe's, 512)")
    parser.add_argument("--calibration", type=Path, help="calibration photos (default: DATA/content/train)")
    parser.add_argument("--held-out", type=Path, help="photos for the quality report (default: DATA/content/demo)")
    parser.add_argument("--check-side", type=int, default=CHECK_SIDE,
                        help=f"held-out photos are scaled to this longest side (default {CHECK_SIDE})")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached entry exists")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return lambda items: tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False,
                              disable=not sys.stderr.isatty())


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from instyle import checkpoint
    from instyle.errors import UsageError
    from instyle.paths import data_dir

    from . import ov_quant
    from .int8_recipe import GATE_DB, Recipe

    ov_quant._nncf()  # nncf missing: one line with the install command, before any slow work
    fields = {k: v for k, v in (("crops", args.crops), ("side", args.side)) if v is not None}
    if any(v < 1 for v in (*fields.values(), args.check_side)):
        raise UsageError("--crops, --side and --check-side must be positive")
    recipe = dataclasses.replace(Recipe(), **fields)
    calibration = args.calibration or data_dir() / "content" / "train"
    held_out = ov_quant.photos(args.held_out or data_dir() / "content" / "demo")
    if calibration.resolve() in {p.parent.resolve() for p in held_out}:
        raise UsageError(f"{calibration}: the held-out photos must not be calibration photos")
    path, _ = checkpoint.resolve_style(args.model)
    if args.ship:
        if path.resolve() not in {p.resolve() for p in checkpoint.shipped().values()}:
            raise UsageError(f"--ship writes the int8 model of a shipped zoo file; {path} is not one")
        sidecar = ov_quant.ship(path, recipe, calibration, held_out,
                                progress=_bar(recipe.crops, f"calibration crops {path.stem}"), max_side=args.check_side)
        report, hit = sidecar["gate"], False
        print(f"wrote {path.with_suffix('').name}.int8.xml/.bin/.json in {path.parent} "
              f"({sidecar['build_s']:.0f} s)", file=sys.stderr)
    else:
        model, meta = checkpoint.load(path)
        report, hit = ov_quant.build(model.float().eval(), recipe, calibration, held_out,
                                     names=checkpoint.style_names(meta),
                                     progress=_bar(recipe.crops, f"calibration crops {path.stem}"),
                                     force=args.force, max_side=args.check_side)
    report = {name or path.stem: dict(r, cached=hit) for name, r in report["styles"].items()}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, r in report.items():
            worst = min(r["photos"], key=lambda p: p["psnr_db"])
            delta = max(p["max_abs"] for p in r["photos"])
            print(f"{name:16s} min PSNR {r['min_psnr_db']:6.2f} dB  max|Δ| {delta:6.1f}"
                  f"  (worst: {worst['photo']})  {'pass' if r['passed'] else 'FAIL'}"
                  f"{'  [cached]' if r['cached'] else ''}")
    failed = [n for n, r in report.items() if not r["passed"]]
    styles = [n for n in report if n != ov_quant.EVEN_MIX]
    if not failed:
        verdict = "passed: auto picks int8"
    elif len(styles) > 1 and set(failed) != set(report):
        verdict = (f"{', '.join(failed)} not passed: auto runs int8 for the other styles and bf16/fp32 for "
                   f"{'that one' if len(failed) == 1 else 'those'} (--precision int8 runs int8 for all)")
    else:
        verdict = f"{', '.join(failed)} not passed: auto keeps bf16/fp32 (--precision int8 still runs it)"
    print(f"gate (>= {GATE_DB:g} dB vs eager fp32 on {len(held_out)} held-out photos, per style): {verdict}",
          file=sys.stderr)
    return 0
