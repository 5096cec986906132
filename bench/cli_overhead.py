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


def run_process(cmd: list[str], threads: int) -> dict:
    """CPU seconds (user + sys), wall seconds and peak RSS of one child process, from os.wait4."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} exited {code}: {err.strip()[-500:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


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
    p.add_argument("--forward-only", type=Path, metavar="IMAGE", help=argparse.SUPPRESS)  # run_bare_forward's child
    args = p.parse_args(argv)
    if args.forward_only:
        bare_forward(args.forward_only, args.model or default_model(), args.threads, repeats=0)
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
