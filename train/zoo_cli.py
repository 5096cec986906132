"""Train the style zoo on this machine, gate it against the shipped one, ship it when it is better.

    python -m instyle.train.zoo_cli --out runs/zoo-v2 [--phases 128:1500,256:300] [--ship]

Phases run one after another, each continuing the last (the first continues --init, the shipped zoo by
default; a style it lacks starts from its mean row) with every weight and Adam's moments, at the phase's crop
size for its number of steps (batch 4). Each phase is resumable: run the same command again after an
interruption and it goes on from the last checkpoint (every 100 steps), or skips a finished phase.
Then the gate (train/style_metric.py) scores the new zoo and the shipped one on the same held-out photos
(train/zoo.py: the last 20 training photos, never trained on) at 384 px, and reports the same at 1024 px on a
few of them; gate.json, gate-1024.json and gate.md go into --out. With --ship the new zoo replaces
instyle/zoo/styles.safetensors when it gates better (train/zoo.py: better).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def parse_phases(text: str) -> list[tuple[int, int]]:
    """'128:1500,256:300' -> [(128, 1500), (256, 300)] (crop size, steps)."""
    phases = []
    for item in text.split(","):
        size, _, steps = item.strip().partition(":")
        try:
            phases.append((int(size), int(steps)))
        except ValueError:
            raise SystemExit(f"--phases {text!r}: expected SIZE:STEPS[,SIZE:STEPS...]") from None
        if phases[-1][0] < 16 or phases[-1][0] % 4 or phases[-1][1] < 1:
            raise SystemExit(f"--phases {text!r}: sizes must be multiples of 4 >= 16, steps >= 1")
    return phases


def parse_multipliers(text: str | None) -> dict[str, float]:
    """'candy=1.5,the_scream=2' -> {"candy": 1.5, "the_scream": 2.0}."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            name, _, w = item.partition("=")
            out[name.strip()] = float(w)
    return out


def _iterations(model: Path) -> int:
    from instyle.checkpoint import read_metadata

    return int(json.loads(read_metadata(model).get("training") or "{}").get("iterations", 0))


def train_phases(a, data: Path, styles: list[Path]) -> Path:
    """Run (or resume, or skip) each phase; returns the last phase's model."""
    from instyle.train import zoo as Z
    from instyle.train.state import state_path

    init = None if str(a.init) == "none" else a.init
    for i, (size, steps) in enumerate(parse_phases(a.phases)):
        folder = a.out / f"phase{i + 1}-{size}"
        model = folder / "train" / "styles.safetensors"
        if model.is_file() and _iterations(model) >= steps:
            print(f"phase {i + 1}: {model} has its {steps} steps; skipped", flush=True)
        else:
            resume = state_path(model).is_file()
            print(f"phase {i + 1}: {steps} steps at {size} px from {init}" + (" (resumed)" if resume else ""),
                  flush=True)
            t0 = time.perf_counter()
            Z.train(folder, data, budget=None, iterations=steps, image_size=size, batch=a.batch,
                    model_config=model_config(a), styles=styles, workers=1, device="cpu", init=init,
                    style_weight=a.style_weight, lattice_weight=a.lattice_weight,
                    multipliers=parse_multipliers(a.multipliers), warmup=a.warmup, resume=resume,
                    checkpoint_every=100, teacher=a.teacher, distill_weight=a.distill_weight,
                    content_weight=a.content_weight, tv_weight=a.tv_weight, lr=a.lr, compile=a.compile)
            print(f"phase {i + 1}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        init = model
    return init


def _shipped_zoo() -> Path:
    from instyle.paths import ZOO_DIR

    return ZOO_DIR / "styles.safetensors"


def model_config(a) -> dict:
    """The generator's constructor arguments the command line sets (only those given)."""
    return {k: v for k, v in (("width", a.width), ("blocks", a.blocks)) if v is not None}


def gate_table(new: dict, old: dict | None) -> str:
    """Markdown: one row per style, the new zoo's figures beside the shipped one's."""
    lines = ["| style | ratio | shipped | content | shipped | lattice | shipped | passed |",
             "|---|---:|---:|---:|---:|---:|---:|:-:|"]
    for name, r in new["styles"].items():
        o = (old or {}).get("styles", {}).get(name, {})

        def cell(row, key, fmt):
            return format(row[key], fmt) if key in row else "–"

        lines.append(f"| {name} | {cell(r, 'gram_ratio_median', '.3f')} | {cell(o, 'gram_ratio_median', '.3f')} | "
                     f"{cell(r, 'content_median', '.2f')} | {cell(o, 'content_median', '.2f')} | "
                     f"{cell(r, 'lattice_median', '.1f')} | {cell(o, 'lattice_median', '.1f')} | "
                     f"{'yes' if r['passed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from instyle.paths import data_dir

    p = argparse.ArgumentParser(prog="python -m instyle.train.zoo_cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (phases, gate files, the new zoo)")
    p.add_argument("--phases", default="128:1500,256:300", help="SIZE:STEPS,... (default %(default)s)")
    p.add_argument("--init", type=Path, default=_shipped_zoo(),
                   help="the zoo to continue (default: the shipped one; none: start from scratch)")
    p.add_argument("--width", type=int, help="generator width from scratch (default 32; 16: the slim zoo)")
    p.add_argument("--blocks", type=int, help="residual blocks from scratch (default 5)")
    p.add_argument("--teacher", type=Path, help="distil from this zoo (with --distill-weight)")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of the squared pixel difference to the teacher's output (default 0: off)")
    p.add_argument("--content-weight", type=float, help="content weight (default: the calibrated one)")
    p.add_argument("--tv-weight", type=float, help="total-variation weight (default: the calibrated one)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default %(default)s)")
    p.add_argument("--compile", action="store_true", help="the compiled training step (train/compiled_step.py); "
                   "each phase compiles once, a minute or two on a CPU")
    p.add_argument("--shipped", type=Path, default=_shipped_zoo(),
                   help="the shipped zoo to gate against and replace with --ship (default %(default)s)")
    p.add_argument("--style-weight", type=float, help="global (balanced) style weight (default: the calibrated one)")
    p.add_argument("--lattice-weight", type=float, help="stride-lattice weight (default: the calibrated one)")
    p.add_argument("--multipliers", help="per-style weight multipliers, NAME=W,... (default: all 1)")
    p.add_argument("--warmup", type=int, default=50, help="LR warm-up steps of each phase (default %(default)s)")
    p.add_argument("--gate-photos", type=int, default=20, help="held-out photos at 384 px (default %(default)s)")
    p.add_argument("--report-photos", type=int, default=4, help="of them, at 1024 px (default %(default)s; 0: none)")
    p.add_argument("--ship", action="store_true", help="replace the shipped zoo when the new one gates better")
    a = p.parse_args(argv)

    from instyle.train import zoo as Z

    data = data_dir()
    styles = Z.style_files(data / "styles")
    a.out.mkdir(parents=True, exist_ok=True)
    model = train_phases(a, data, styles)
    _, held = Z.split_photos(data / "content" / "train", a.out)
    photos = held[:a.gate_photos]
    shipped = a.shipped
    gates = {}
    for side, chosen in ((384, photos), (1024, photos[:a.report_photos])):
        if not chosen:
            continue
        t0 = time.perf_counter()
        new = Z.gate(model, data, chosen, side=side, device="cpu")
        old = Z.gate(shipped, data, chosen, side=side, device="cpu") if shipped.is_file() else None
        gates[side] = {"new": new, "shipped": old, "gate_s": round(time.perf_counter() - t0, 1)}
        print(f"gate at {side} px on {len(chosen)} photos:\n{gate_table(new, old)}", flush=True)
    if 384 not in gates:
        print(f"trained: {model} (no gate: --gate-photos 0)", flush=True)
        return 0
    wins, why = Z.better(gates[384]["new"], gates[384]["shipped"])
    decision = {"better": wins, "why": why, "model": str(model), "init": str(a.init), "phases": a.phases}
    (a.out / "gate.json").write_text(json.dumps({**gates[384], "decision": decision}, indent=2))
    if 1024 in gates:
        (a.out / "gate-1024.json").write_text(json.dumps(gates[1024], indent=2))
    (a.out / "gate.md").write_text("".join(f"## {side} px, {len(g['new']['photos'])} held-out photos\n\n"
                                           f"{gate_table(g['new'], g['shipped'])}\n" for side, g in gates.items())
                                   + f"Decision: {'better' if wins else 'not better'} ({why})\n")
    print(f"decision: {'better' if wins else 'not better'}: {why}", flush=True)
    if a.ship and wins:
        passed = list(gates[384]["new"]["styles"])  # every style ships: one that fails keeps its retrained row
        out = Z.keep_styles(model, passed, a.out / "zoo" / "styles.safetensors")
        shutil.copyfile(out, shipped)
        print(f"shipped: {shipped} ({shipped.stat().st_size / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
