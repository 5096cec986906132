"""The GPU campaign: one prepared, offline, time-boxed run that turns a short GPU loan into results.

    python -m instyle.bench.campaign --bundle                 # here: assemble .bundle/, print the device commands
    bash .bundle/run.sh zoo                                   # GPU machine, call 1 (carry .bundle)
    bash .bundle/run.sh verify                                # GPU machine, call 2
    python -m instyle.bench.campaign --dry-run --out DIR      # here: both stages on the CPU, tiny sizes

Stages (docs/architecture.md, "The GPU campaign"): `zoo` trains, gates and ships the style zoo (train/zoo.py;
its pictures: bench/zoo_pictures.py); `verify` runs the GPU tests, 4K parity, the headline benchmark, training
throughput and the fused chain's per-layer profile (verify.py). Every step writes its files as it
finishes and the stage's `summary.json` is rewritten after each step: {"stages": [{"name", "status":
ok|failed|skipped|timeout, "seconds", ...}]}, so a call cut short still returns what it measured. `--dry-run`
runs the same steps on the CPU under the Triton interpreter, counts the Triton kernels each GPU stage will
compile (census.py) and estimates each stage's device time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Estimates for the device timeline (not measurements): seconds per compiled kernel on the GPU machine,
# and the fixed costs of a zoo call (imports, VGG and style Grams, data loader start).
COMPILE_S_PER_KERNEL = 1.5
ZOO_FIXED_S = 45
GATE_S, PICTURES_S = 20, 15  # the gate runs twice: the new zoo and the shipped one (the baseline)
# inductor compiling the zoo's training step for the GPU (forward + backward + Adam): an estimate until a loan's
# zoo summary measures it (training.first_step_s). Spent inside --budget: fewer steps, not a longer call.
STEP_COMPILE_S = 60
# the dry run's steps run in the Triton interpreter: their time limits are the GPU's times this
DRY_RUN_SLOWDOWN = 20


class Summary:
    """summary.json of one stage folder, rewritten atomically after every step."""

    def __init__(self, out: Path, mode: str):
        self.path, self.data = out / "summary.json", {"mode": mode, "stages": []}

    def add(self, name: str, status: str, seconds: float, **extra) -> None:
        self.data["stages"].append({"name": name, "status": status, "seconds": round(seconds, 1), **extra})
        self.write()

    def write(self) -> None:
        from instyle.atomic import atomic_path

        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2, default=str))


def _recording(dry: bool):
    import contextlib

    if not dry:
        return contextlib.nullcontext(None)
    from .census import recording

    return recording()


def _write_specializations(path: Path, census) -> None:
    path.write_text(json.dumps(census.specializations(), indent=1, default=str))


def _step(summary: Summary, name: str, fn, dry: bool) -> object:
    """Run fn() as one step; record ok/failed, its seconds, and (dry run) the kernels it launched."""
    t0 = time.perf_counter()
    with _recording(dry) as census:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 -- a failed step is reported, the stage decides what follows
            traceback.print_exc()
            summary.add(name, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:500])
            return None
    extra = {}
    if census is not None:
        extra = {"kernels": census.count(), "kernels_by_name": census.by_kernel()}
        _write_specializations(summary.path.parent / f"kernels-{name}.json", census)
    summary.add(name, "ok", time.perf_counter() - t0, **extra)
    return result


# ------------------------------------------------------------------------------------------------- zoo


def run_zoo(out: Path, dry: bool, budget: float, init: Path | None = None, compile: bool = True) -> Summary:
    import torch

    from instyle.bench.zoo_pictures import pictures
    from instyle.paths import ZOO_DIR, data_dir
    from instyle.train import zoo as Z
    from instyle.train.style_metric import GATE_RATIO

    data = data_dir()
    summary = Summary(out, "dry-run" if dry else "gpu")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    styles = Z.style_files(data / "styles")
    # the compiled step (bf16 + channels_last on CUDA); the dry run captures it with aot_eager (the graphs, no
    # recompiles; no code generated: inductor's CPU code is not the GPU's, and tests/test_train_compiled.py's
    # slow test checks inductor's numbers)
    if dry:
        styles = styles[:2]
        opts = dict(budget=min(budget, 8.0), image_size=32, batch=2, model_config=dict(width=8, blocks=1),
                    workers=0, fused="on", style_size=128, compile="aot_eager" if compile else False)
    else:
        opts = dict(budget=budget, image_size=256, batch=16, model_config={},
                    workers=max(1, min(12, (os.cpu_count() or 4) - 2)), compile=compile)
    print(f"zoo: {len(styles)} styles ({', '.join(p.stem for p in styles)}), {opts['budget']:.0f} s of training on "
          f"{device}{' (compiled step)' if compile else ''} from {init or 'scratch'}", flush=True)
    trained = _step(summary, "zoo.train", lambda: Z.train(out, data, styles=styles, device=device, init=init, **opts),
                    dry)
    if trained is None:
        return summary
    model = trained.pop("model")
    summary.data["training"] = trained
    summary.write()
    _, held = Z.split_photos(data / "content" / "train", out)
    demo = sorted((data / "content" / "demo").glob("*.jpg"))
    photos = demo if dry else held + demo
    gate_opts = dict(side=64 if dry else 384, device=device, style_size=128 if dry else 512)
    verdict = _step(summary, "zoo.gate", lambda: Z.gate(model, data, photos, **gate_opts), dry)
    if verdict is None:
        return summary
    (out / "gate.json").write_text(json.dumps(verdict, indent=2))
    summary.data["gate"] = verdict["styles"]
    baseline, shipped_zoo = None, ZOO_DIR / "styles.safetensors"
    if shipped_zoo.is_file():
        baseline = _step(summary, "zoo.baseline", lambda: Z.gate(shipped_zoo, data, photos, **gate_opts), dry)
        if baseline is not None:
            (out / "gate-shipped.json").write_text(json.dumps(baseline, indent=2))
    wins, why = Z.better(verdict, baseline)
    summary.data["decision"] = {"ship": wins, "why": why, "retrain": Z.retrain_multipliers(verdict, GATE_RATIO)}
    keep = list(verdict["styles"]) if wins or dry else []  # a dry run ships anyway to exercise the path
    shipped = _step(summary, "zoo.ship", lambda: Z.keep_styles(model, keep, out / "zoo" / "styles.safetensors"),
                    dry) if keep else None
    if shipped is not None:
        demo_photo = data / "content" / "demo" / "chicago.jpg"
        _step(summary, "zoo.pictures", lambda: pictures(shipped, demo_photo, out / "pictures",
                                                           side=64 if dry else 640, crop_4k=not dry,
                                                           device=device), dry)
    summary.data["shipped"] = keep if shipped is not None else []
    if shipped is not None:
        summary.data["moments"] = str(_moments_beside(model, shipped, keep).relative_to(out))
    summary.write()
    return summary


def _moments_beside(model: Path, shipped: Path, keep: list[str]) -> Path:
    """Adam's moments of the trained `model` beside the `shipped` zoo (its sibling .adam.safetensors, which
    --init finds), so a later loan continues them. A hard link: the returned archive holds the bytes once (a
    copy could push it past what a returned file may hold); where links fail, the trained model's own."""
    from instyle import checkpoint
    from instyle.train.adam_state import adam_path

    assert checkpoint.style_names(checkpoint.read_metadata(model)) == keep, "moments rows follow the model's"
    src, dst = adam_path(model), adam_path(shipped)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        return src
    return dst


# ---------------------------------------------------------------------------------------------- verify


def _child(name: str, out: Path, dry: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "instyle.bench.campaign", "--step", name, "--out", str(out)]
    return subprocess.Popen(cmd + (["--dry-run"] if dry else []))


def _wait(proc: subprocess.Popen, limit: float) -> str:
    try:
        return "ok" if proc.wait(timeout=limit) == 0 else "failed"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timeout"


def run_verify(out: Path, dry: bool, deadline: float, only: list[str] | None = None) -> Summary:
    from . import verify as V

    summary = Summary(out, "dry-run" if dry else "gpu")
    started = time.perf_counter()
    scale = DRY_RUN_SLOWDOWN if dry else 1
    for group in V.GROUPS:
        group = [n for n in group if only is None or n in only]
        left = deadline - (time.perf_counter() - started)
        if group and left < 5:
            for name in group:
                summary.add(f"verify.{name}", "skipped", 0, reason="stage deadline reached")
            continue
        t0 = time.perf_counter()
        children = {name: _child(name, out, dry) for name in group}
        for name, proc in children.items():  # each within its own limit from the group's start
            limit = min(V.LIMITS[name] * scale, left) - (time.perf_counter() - t0)
            _record(summary, out, name, _wait(proc, max(1.0, limit)), time.perf_counter() - t0)
    return summary


def _record(summary: Summary, out: Path, name: str, status: str, seconds: float) -> None:
    result = out / f"{name}.json"
    extra = json.loads(result.read_text()) if result.is_file() else {}
    if status == "ok" and extra.get("ok") is False:
        status = "failed"
    summary.add(f"verify.{name}", status, seconds, **{k: v for k, v in extra.items() if k in (
        "kernels", "summary", "error", "gpu", "torch", "triton")})


def run_step(name: str, out: Path, dry: bool) -> int:
    """One verify step in this process: its result goes to <out>/<name>.json."""
    from instyle.atomic import atomic_path

    from . import verify as V

    with _recording(dry) as census:
        try:
            result = V.STEPS[name](out, dry)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    if census is not None:
        result = {**result, "kernels": census.count(), "kernels_by_name": census.by_kernel()}
        _write_specializations(out / f"kernels-verify.{name}.json", census)
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result.get("ok", True) else 1


# -------------------------------------------------------------------------------------------- dry run


CALL_LIMIT_S = 480  # what one device call should stay under (the device allows 600; the rest is start and transfer)
VERIFY_START_S = 40  # run.sh before the stage's clock starts: wheels installed, imports (an estimate)


def plan(zoo: Summary, verify: Summary, budget: float, deadline: float = 320,
         only: list[str] | None = None) -> list[dict]:
    """The planned device timeline: per stage, the kernels it compiles and an estimate of its seconds. verify: the
    sum of its groups' limits is the upper bound; under `deadline` the steps past it are the ones cut if every
    step took its whole limit."""
    from . import verify as V

    def kernels(summary: Summary) -> int:
        return sum(s.get("kernels", 0) for s in summary.data["stages"])

    k_zoo, k_verify = kernels(zoo), kernels(verify)
    zoo_s = ZOO_FIXED_S + budget + 2 * GATE_S + PICTURES_S + COMPILE_S_PER_KERNEL * k_zoo
    verify_s, at_risk = 0, []
    for group in V.GROUPS:  # as run_verify runs them: a group starts while more than 5 s are left
        group = [n for n in group if only is None or n in only]
        if not group:
            continue
        if deadline - verify_s < 5:
            at_risk += group
        verify_s += max(V.LIMITS[n] for n in group)
    compiled = zoo.data.get("training", {}).get("compiled", False)
    step = {"compile_s": STEP_COMPILE_S, "train_s": round(budget - STEP_COMPILE_S),
            "note": "compiling the training step is spent within the budget"} if compiled else {}
    return [{"stage": "zoo", "kernels": k_zoo, "estimate_s": round(zoo_s), **step},
            {"stage": "verify", "kernels": k_verify, "estimate_s": VERIFY_START_S + min(verify_s, deadline),
             "upper_bound_s": VERIFY_START_S + verify_s, "deadline_s": deadline,
             "fits_one_call": VERIFY_START_S + min(verify_s, deadline) <= CALL_LIMIT_S,
             "cut_if_every_step_takes_its_limit": at_risk,
             "note": "start + the sum of the steps' time limits, capped by the stage deadline (a step still "
                     "running then is stopped)"}]


def _only(p: argparse.ArgumentParser, text: str | None) -> list[str] | None:
    """--only's verify steps, checked against the stage's."""
    if not text:
        return None
    from . import verify as V

    only = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in only if n not in V.STEPS]
    if unknown:
        p.error(f"--only: unknown steps {unknown} (steps: {', '.join(V.STEPS)})")
    return only


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", nargs="?", const=".bundle", metavar="DIR", help="assemble the bundle (default .bundle)")
    p.add_argument("--stage", choices=("zoo", "verify"), help="run one stage (on the GPU machine)")
    p.add_argument("--dry-run", action="store_true", help="both stages on this CPU, tiny sizes, Triton interpreter")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--budget", type=float, default=270, help="zoo: seconds of training (default 270)")
    p.add_argument("--init", type=Path, metavar="MODEL|none", help="zoo: continue training from this generator, "
                   "styles matched by name (default: the shipped zoo, instyle/zoo/styles.safetensors; none: from "
                   "scratch)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="zoo: the compiled training step (default: on; --no-compile: the eager step)")
    p.add_argument("--deadline", type=float, default=320, help="verify: seconds for the whole stage (default 320)")
    p.add_argument("--only", metavar="LIST", help="verify (and the dry run's verify): run only these steps "
                   "(comma-separated), in stage order")
    p.add_argument("--no-wheels", action="store_true", help="--bundle without downloading wheels")
    p.add_argument("--step", help=argparse.SUPPRESS)  # one verify step, in a child process
    a = p.parse_args(argv)
    if a.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    if a.bundle:
        from instyle.paths import PROJECT_ROOT, data_dir

        from .bundle import build

        manifest = build(Path(a.bundle).resolve(), data_dir(), PROJECT_ROOT, wheels=not a.no_wheels)
        print(json.dumps(manifest, indent=2))
        print("\nOn the GPU machine (device run, carry " + json.dumps(manifest["carry"]) + "):")
        for c in manifest["commands"]:
            print("  " + c)
        return 0
    if a.out is None:
        p.error("--out DIR is needed with --stage, --step and --dry-run")
    a.out.mkdir(parents=True, exist_ok=True)
    if a.step:
        return run_step(a.step, a.out, a.dry_run)
    if a.dry_run:
        zoo = run_zoo(a.out / "zoo", True, a.budget, compile=a.compile)
        only = _only(p, a.only)
        verify = run_verify(a.out / "verify", True, a.deadline * DRY_RUN_SLOWDOWN, only)
        stages = zoo.data["stages"] + verify.data["stages"]
        timeline = plan(zoo, verify, a.budget, a.deadline, only)
        summary = {"mode": "dry-run", "stages": stages, "device_plan": timeline}
        (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        specs = {json.dumps(s, sort_keys=True, default=str) for f in sorted(a.out.rglob("kernels-*.json"))
                 for s in json.loads(f.read_text())}
        (a.out / "kernels.json").write_text(json.dumps([json.loads(s) for s in sorted(specs)], indent=1))
        print(f"{len(specs)} distinct kernel specializations -> {a.out / 'kernels.json'} "
              f"(python -m instyle.bench.campaign.compile_check compiles them for sm_90)")
        for s in stages:
            print(f"{s['name']:<22}{s['status']:<9}{s['seconds']:>7.1f} s  {s.get('kernels', '')}")
        for t in timeline:
            line = f"device plan: {t['stage']:<7} {t['kernels']:>3} kernels, ~{t['estimate_s']} s (estimate)"
            if "fits_one_call" in t:
                cut = ", ".join(t["cut_if_every_step_takes_its_limit"]) or "nothing"
                line += (f"; fits one {CALL_LIMIT_S}-s call: {'yes' if t['fits_one_call'] else 'NO'}; upper bound "
                         f"{t['upper_bound_s']} s, the {t['deadline_s']:.0f}-s deadline would cut: {cut}")
            print(line)
        return 0 if all(s["status"] == "ok" for s in stages) else 1
    if a.stage == "zoo":
        from instyle.paths import ZOO_DIR

        init = None if str(a.init) == "none" else (a.init or ZOO_DIR / "styles.safetensors")
        if init is not None and not init.is_file():
            p.error(f"--init {init}: no such model file")
        summary = run_zoo(a.out, False, a.budget, init, a.compile)
    elif a.stage == "verify":
        summary = run_verify(a.out, False, a.deadline, _only(p, a.only))
    else:
        p.error("one of --bundle, --stage, --dry-run is needed")
    return 0 if all(s["status"] == "ok" for s in summary.data["stages"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
