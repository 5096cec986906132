"""How much does `instyle stylize` cost on top of the generator itself? (CPU)

    python -m instyle.bench.cli_overhead [--model M] [--size 1024] [--images 3] [--threads 1] [--no-4k]

1. Glue overhead. A 1024x1024 JPEG (cut from a photo of the shared data) is stylized by
   `python -m instyle stylize` in a subprocess, once with 1 copy and once with `--images` copies of it;
   the CPU time (user + sys, from os.wait4) of each run gives
     per-image cost = (T(n) - T(1)) / (n - 1)        fixed cost = T(1) - per-image cost
   and is compared with the bare forward (`model(x)` on the same decoded tensor, in this process, median
   of `--repeats` after one warm-up). Per-image overhead % = (per-image cost - forward) / forward: reading,
   decoding, tensor conversion, padding/clamp, encoding and writing. The fixed cost (interpreter start,
   imports, model load) is reported separately and as a % of a one-image run.
2. Peak RSS of a 3840x2160 stylize: ru_maxrss of that one subprocess (os.wait4), i.e. the most resident
   memory the whole `instyle stylize` process ever held.
3. With --help-walltime: the start-up cost alone, the wall time of `instyle --help`, for one or more
   installs (`--python PY`, each a venv's interpreter: `PY -m instyle --help` and the `instyle` console
   script beside PY), in interleaved rounds; every round also runs each under `-X importtime`
   (PYTHONPROFILEIMPORTTIME=1), which records whether torch, numpy or Pillow were imported. Each install
   is checked first: which instyle/cli.py it imports, and that tree's git commit.

Backend eager, fp32, CPU; every process gets the same thread count (OMP_NUM_THREADS and
torch.set_num_threads), 1 by default: CPU time is then work, not the spinning of idle OpenMP threads
on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_OVERHEAD_PCT, GOAL_RSS_GB = 15.0, 6.0
PHOTO_1K = "exif_hdr_canon_hdr_NO.jpg"      # 2048x1536
PHOTO_4K = "exif_tests_42_IndexError.jpg"   # 4032x3024


def make_photo(src: Path, dst: Path, width: int, height: int) -> Path:
    """Centre-crop `src` to the aspect of width x height, resize, save as JPEG (quality 95)."""
    from PIL import Image, ImageOps

    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        ImageOps.fit(im, (width, height), Image.Resampling.LANCZOS).save(dst, quality=95)
    return dst


def run_stylize(inputs: list[Path], out_dir: Path, model: str, threads: int) -> dict:
    """One `python -m instyle stylize` process: its CPU seconds, wall seconds and peak RSS (os.wait4)."""
    cmd = [sys.executable, "-m", "instyle", "stylize", *map(str, inputs), "-o", str(out_dir), "--model", model,
           "--backend", "eager", "--precision", "fp32", "--device", "cpu", "--overwrite"]
    result = run_process(cmd, threads)
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    if len(written) != len(inputs):
        raise RuntimeError(f"instyle stylize wrote {len(written)} files for {len(inputs)} inputs")
    return result


def run_bare_forward(photo: Path, model: str, threads: int) -> dict:
    """A process that only loads the model and the image and runs one forward: the model's own footprint."""
    return run_process([sys.executable, "-m", "instyle.bench.cli_overhead", "--forward-only", str(photo),
                        "--model", model, "--threads", str(threads)], threads)


def run_process(cmd: list[str], threads: int, env: dict | None = None, keep_stderr: bool = False,
                cwd: Path | None = None) -> dict:
    """CPU seconds (user + sys), wall seconds and peak RSS of one child process, from os.wait4 (and its stderr
    with `keep_stderr`). Stderr goes to a file, not a pipe: a child that writes more than a pipe holds (an
    import-time profile) would block while this process waits for it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **(env or {}))
    with tempfile.TemporaryFile() as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} exited {code}: {err.strip()[-500:]}")
    result = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    return dict(result, stderr=err) if keep_stderr else result


def bare_forward(photo: Path, model_path: str, threads: int, repeats: int) -> dict:
    """model(x) on the decoded photo: CPU and wall seconds, median of `repeats` after a warm-up."""
    import torch

    from instyle import checkpoint, io

    torch.set_num_threads(threads)
    model, _ = checkpoint.load(checkpoint.resolve(model_path))
    x = io.to_tensor([io.read_image(photo)]).float()
    cpu, wall = [], []
    with torch.inference_mode():
        model(x)  # warm-up (and, with repeats=0, the whole job of a --forward-only child)
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            model(x)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
    if not repeats:
        return {}
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall), "shape": list(x.shape)}


def default_model() -> str:
    from instyle import checkpoint
    from instyle.paths import data_dir

    try:
        return str(checkpoint.resolve(None))
    except checkpoint.CheckpointError:
        return str(data_dir() / "pretrained" / "random-transformernet.pth")


def measure(model: str, size: int, images: int, threads: int, repeats: int, four_k: bool) -> dict:
    from instyle.paths import data_dir

    hires = data_dir() / "content" / "hires"
    result = {"model": model, "threads": threads, "size": size, "images": images, "backend": "eager/fp32/cpu"}
    with tempfile.TemporaryDirectory(prefix="instyle-overhead-") as tmp:
        tmp = Path(tmp)
        photo = make_photo(hires / PHOTO_1K, tmp / "photo.jpg", size, size)
        copies = [photo] + [Path(shutil.copyfile(photo, tmp / f"photo{i}.jpg")) for i in range(1, images)]
        forward = bare_forward(photo, model, threads, repeats)
        one = run_stylize([photo], tmp / "out1", model, threads)
        many = run_stylize(copies, tmp / "outn", model, threads)
        per_image = (many["cpu_s"] - one["cpu_s"]) / (images - 1)
        fixed = one["cpu_s"] - per_image
        result.update(
            forward=forward, stylize_1=one, stylize_n=many,
            per_image_cpu_s=per_image, fixed_cpu_s=fixed,
            per_image_overhead_pct=100 * (per_image - forward["cpu_s"]) / forward["cpu_s"],
            one_image_overhead_pct=100 * (one["cpu_s"] - forward["cpu_s"]) / forward["cpu_s"],
        )
        if four_k:
            photo4k = make_photo(hires / PHOTO_4K, tmp / "photo4k.jpg", 3840, 2160)
            result["stylize_4k"] = run_stylize([photo4k], tmp / "out4k", model, threads)
            result["forward_4k"] = run_bare_forward(photo4k, model, threads)
    return result


HEAVY = ("torch", "numpy", "PIL")  # what `instyle --help` should not import


def imported_modules(importtime: str) -> dict[str, int]:
    """Module -> its own import time in microseconds, from `-X importtime` output (stderr)."""
    modules = {}
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            self_us, _, name = line[len("import time:"):].split("|")
            modules[name.strip()] = int(self_us)
    return modules


def install(python: str, cwd: Path) -> dict:
    """What `python` runs as instyle from `cwd`: the files of instyle.cli and of a subpackage's module (both
    from one tree, or this raises), that tree's git commit, and the console script beside `python`.
    `python -m` and `python -c` put the working folder first on sys.path: started in a source tree, they
    import that tree's instyle/ and the install's subpackages, a mix. Time them from an empty folder."""
    code = "import instyle.cli, instyle.bench.cli as b; print(instyle.cli.__file__); print(b.__file__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=cwd)
    cli, sub = (Path(line) for line in out.stdout.split())
    if cli.parent.parent != sub.parent.parent:
        raise RuntimeError(f"{python} imports instyle from two trees: {cli} and {sub}")
    rev = subprocess.run(["git", "-C", str(cli.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    script = Path(python).parent / "instyle"
    return {"python": python, "cli_file": str(cli), "subpackage_file": str(sub), "git_rev": rev.stdout.strip() or None,
            "script": str(script),
            "script_python": script.read_text().splitlines()[0].removeprefix("#!") if script.is_file() else None}


def help_walltime(pythons: list[str], runs: int) -> dict:
    """`instyle --help` per install and way of starting it: wall and CPU seconds of `runs` plain runs, and of
    `runs` runs under -X importtime (its module count and summed import time, and the heavy modules it saw).
    Rounds are interleaved, each in a rotated order, so a busy moment of the machine hits every variant."""
    with tempfile.TemporaryDirectory(prefix="instyle-help-") as cwd:
        return _help_walltime(pythons, runs, Path(cwd))


def _help_walltime(pythons: list[str], runs: int, cwd: Path) -> dict:
    variants = []
    for python in pythons:
        where = install(python, cwd)
        variants.append(dict(where, how="python -m instyle --help", cmd=[python, "-m", "instyle", "--help"]))
        if where["script_python"]:
            variants.append(dict(where, how="instyle --help", cmd=[where["script"], "--help"]))
    samples = {i: {"plain": [], "importtime": []} for i in range(len(variants))}
    for r in range(runs):
        order = list(range(len(variants)))
        for i in order[r % len(order):] + order[:r % len(order)]:
            cmd = variants[i]["cmd"]
            samples[i]["plain"].append(run_process(cmd, threads=1, cwd=cwd))
            timed = run_process(cmd, threads=1, env={"PYTHONPROFILEIMPORTTIME": "1"}, keep_stderr=True, cwd=cwd)
            modules = imported_modules(timed.pop("stderr"))
            timed.update(modules=len(modules), import_s=sum(modules.values()) / 1e6,
                         heavy=[m for m in HEAVY if m in modules])
            samples[i]["importtime"].append(timed)
    rows = []
    for i, v in enumerate(variants):
        plain, prof = samples[i]["plain"], samples[i]["importtime"]
        rows.append(dict(v, runs=runs, wall_s=_spread([s["wall_s"] for s in plain]),
                         cpu_s=_spread([s["cpu_s"] for s in plain]),
                         importtime_wall_s=_spread([s["wall_s"] for s in prof]),
                         import_s=_spread([s["import_s"] for s in prof]),
                         modules=statistics.median(s["modules"] for s in prof),
                         heavy=sorted({m for s in prof for m in s["heavy"]}), samples=samples[i]))
    return {"what": "instyle --help", "threads": 1, "rows": rows}


def _spread(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"median": statistics.median(values), "p10": q[0], "p90": q[-1]}


def help_report(r: dict) -> str:
    lines = [f"{r['what']}: wall seconds, median (p10..p90) of {r['rows'][0]['runs']} interleaved runs each; "
             "heavy = torch/numpy/PIL imported (-X importtime)"]
    for row in r["rows"]:
        w, imp = row["wall_s"], row["import_s"]
        lines.append(f"  {(row['git_rev'] or '?')[:7]}  {row['how']:<26} {w['median']:6.3f} s ({w['p10']:.3f}.."
                     f"{w['p90']:.3f})   imports {row['modules']:.0f} modules in {imp['median']:.3f} s, heavy: "
                     f"{', '.join(row['heavy']) or 'none'}   [{row['cli_file']}]")
    return "\n".join(lines)


def report(r: dict) -> str:
    f, one, many = r["forward"], r["stylize_1"], r["stylize_n"]
    lines = [
        f"instyle stylize vs bare forward: {r['size']}x{r['size']} JPEG, {r['backend']}, {r['threads']} thread(s), "
        f"model {Path(r['model']).name}",
        f"  bare forward model(x), median of repeats     cpu {f['cpu_s']:7.2f} s   wall {f['wall_s']:7.2f} s",
        f"  stylize 1 image (whole process)              cpu {one['cpu_s']:7.2f} s   wall {one['wall_s']:7.2f} s",
        f"  stylize {r['images']} images (whole process)             cpu {many['cpu_s']:7.2f} s   wall "
        f"{many['wall_s']:7.2f} s",
        f"  per image (marginal)                         cpu {r['per_image_cpu_s']:7.2f} s   -> I/O + glue overhead "
        f"{r['per_image_overhead_pct']:+.1f} % of the forward (goal <= {GOAL_OVERHEAD_PCT:.0f} %: "
        f"{'met' if r['per_image_overhead_pct'] <= GOAL_OVERHEAD_PCT else 'NOT met'})",
        f"  fixed per process (start, imports, model)    cpu {r['fixed_cpu_s']:7.2f} s   -> a 1-image run costs "
        f"{r['one_image_overhead_pct']:+.1f} % over the forward",
    ]
    if "stylize_4k" in r:
        k, b = r["stylize_4k"], r.get("forward_4k")
        gb = k["peak_rss_mb"] * 2**20 / 1e9
        lines.append(f"  3840x2160 stylize: peak RSS {gb:.2f} GB = {k['peak_rss_mb'] / 1024:.2f} GiB (goal <= "
                     f"{GOAL_RSS_GB:.0f} GB: {'met' if gb <= GOAL_RSS_GB else 'NOT met'}), cpu {k['cpu_s']:.1f} s, "
                     f"wall {k['wall_s']:.1f} s")
        if b:
            lines.append(f"  3840x2160 bare forward process (load model + image, model(x)): peak RSS "
                         f"{b['peak_rss_mb'] * 2**20 / 1e9:.2f} GB, cpu {b['cpu_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.cli_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model for both sides (default: first shipped style, else the shared "
                   "pretrained/random-transformernet.pth)")
    p.add_argument("--size", type=int, default=1024, help="square photo side (default 1024)")
    p.add_argument("--images", type=int, default=3, help="copies in the multi-image run (>= 2, default 3)")
    p.add_argument("--threads", type=int, default=1, help="threads for every process (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed bare forwards (default 3)")
    p.add_argument("--no-4k", dest="four_k", action="store_false", help="skip the 3840x2160 peak-RSS run")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--help-walltime", action="store_true", help="time `instyle --help` instead (section 3 above)")
    p.add_argument("--python", action="append", metavar="PY", help="with --help-walltime: a venv's interpreter "
                   "whose instyle to time (repeat it to compare installs; default: this one)")
    p.add_argument("--runs", type=int, default=15, help="with --help-walltime: rounds (default 15)")
    p.add_argument("--forward-only", type=Path, metavar="IMAGE", help=argparse.SUPPRESS)  # run_bare_forward's child
    args = p.parse_args(argv)
    if args.forward_only:
        bare_forward(args.forward_only, args.model or default_model(), args.threads, repeats=0)
        return 0
    if args.help_walltime:
        result = help_walltime(args.python or [sys.executable], args.runs)
        print(help_report(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.images < 2 or args.size < 8 or args.threads < 1 or args.repeats < 1:
        p.error("need --images >= 2, --size >= 8, --threads >= 1, --repeats >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for this process's forward too (before torch loads)
    result = measure(args.model or default_model(), args.size, args.images, args.threads, args.repeats, args.four_k)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
