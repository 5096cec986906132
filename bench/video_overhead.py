"""What does the video path cost on top of stylizing the same frames as tensors?

    python -m instyle.bench.video_overhead [--model M] [--size 320x240] [--frames 48] [--batch 4]
                                           [--backend eager] [--threads 2] [--repeats 3]

A pan over a real photo of the shared data is written as an H.264 clip (crf 18) with an AAC tone. Then,
alternating, `--repeats` times each:
  tensors  the clip's frames, decoded beforehand (not timed), stylized in batches of --batch by the
           Stylizer, each batch converted to uint8 (what any caller must do to keep the result)
  video    instyle.video.stylize_video on the clip: decode, stylize (same Stylizer, same batches),
           encode with the default codec/quality, copy the audio, atomic write
  io       the video path with an identity "stylizer": decode + colour conversion + encode + mux alone
overhead % = (median video - median tensors) / median tensors, by wall clock and by CPU seconds (all threads
of this process, getrusage); on a machine shared with other jobs both move by several %, so the io arm's
ms/frame over the tensors' ms/frame is printed too: the path's own cost, whatever the neighbours do.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

GOAL_OVERHEAD_PCT = 15.0
PHOTO = "content/hires/exif_tests_33-type_error.jpg"  # 2560x1600


def make_pan(dst: Path, photo: Path, width: int, height: int, frames: int, rate=Fraction(25),
             step=(3, 1), audio: bool = True) -> Path:
    """A camera pan: `width`x`height` windows moving `step` px per frame over `photo` (resized to 1024 px
    wide), H.264 crf 18, plus a 440 Hz AAC tone when `audio`. Returns dst."""
    import av
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(photo) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = im.resize((1024, round(im.height * 1024 / im.width)), Image.Resampling.LANCZOS)
    pic = np.asarray(im)
    dx, dy = step
    if width + dx * frames > pic.shape[1] or height + dy * frames > pic.shape[0]:
        raise ValueError(f"a {frames}-frame pan of {width}x{height} windows does not fit in {im.size}")
    with av.open(str(dst), "w") as c:
        v = c.add_stream("libx264", rate=rate, options={"crf": "18"})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=48000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(frames):
            crop = np.ascontiguousarray(pic[dy * i:dy * i + height, dx * i:dx * i + width])
            f = av.VideoFrame.from_ndarray(crop, format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if a is not None:
            n, total = 1024, int(frames / rate * 48000)
            for t0 in range(0, total, n):
                tone = 0.3 * np.sin(2 * np.pi * 440 * (t0 + np.arange(n)) / 48000).astype(np.float32)
                af = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, t0
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return dst


def decode_rgb(path: Path) -> list:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.video_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model (default: the shared data's random-transformernet.pth)")
    p.add_argument("--size", default="320x240", help="frame WIDTHxHEIGHT (default 320x240)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backend", default="eager")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import instyle
    from instyle import video
    from instyle.paths import data_dir
    from instyle.specs import parse_size

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = parse_size(args.size)
    model = args.model or str(data_dir() / "pretrained" / "random-transformernet.pth")
    stylizer = instyle.load(model, backend=args.backend, device=args.device, precision="fp32", tile="off")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_pan(Path(tmp) / "pan.mp4", data_dir() / PHOTO, width, height, args.frames)
        frames = decode_rgb(clip)
        batches = [torch.from_numpy(np.stack(frames[i:i + args.batch])).permute(0, 3, 1, 2)
                   for i in range(0, len(frames), args.batch)]

        def run_tensors():
            for x in batches:
                stylizer(x).clamp(0, 255).round().to(torch.uint8).cpu()

        def run_video():
            video.stylize_video(stylizer, clip, Path(tmp) / "out.mp4", batch=args.batch)

        def run_io():
            video.stylize_video(lambda x: x.float(), clip, Path(tmp) / "io.mp4", batch=args.batch)

        run_tensors()  # warm-up: first-call allocations, backend set-up
        times = {"tensors": [], "video": [], "io": []}
        cpu = {"tensors": [], "video": [], "io": []}
        for _ in range(args.repeats):
            for name, fn in (("tensors", run_tensors), ("video", run_video), ("io", run_io)):
                c0, t0 = cpu_seconds(), time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(cpu_seconds() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    overhead = 100 * (med["video"] - med["tensors"]) / med["tensors"]
    result = {"size": f"{width}x{height}", "frames": len(frames), "batch": args.batch, "backend": args.backend,
              "device": str(stylizer.device), "threads": torch.get_num_threads(),
              "tensors_ms_per_frame": 1000 * med["tensors"] / len(frames),
              "video_ms_per_frame": 1000 * med["video"] / len(frames),
              "io_ms_per_frame": 1000 * med["io"] / len(frames),
              "io_cpu_ms_per_frame": 1000 * med_cpu["io"] / len(frames),
              "io_pct_of_tensors": 100 * med["io"] / med["tensors"],
              "overhead_pct": overhead,
              "cpu_overhead_pct": 100 * (med_cpu["video"] - med_cpu["tensors"]) / med_cpu["tensors"],
              "goal_pct": GOAL_OVERHEAD_PCT, "runs_s": times}
    print(f"{len(frames)} frames {width}x{height}, batch {args.batch}, {args.backend} on {stylizer.device}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"  tensors: {result['tensors_ms_per_frame']:.1f} ms/frame   video: {result['video_ms_per_frame']:.1f} "
          f"ms/frame   overhead {overhead:+.1f} % wall, {result['cpu_overhead_pct']:+.1f} % CPU "
          f"(goal <= {GOAL_OVERHEAD_PCT:.0f} %)")
    print(f"  decode+encode alone: {result['io_ms_per_frame']:.1f} ms/frame ({result['io_cpu_ms_per_frame']:.1f} "
          f"CPU ms) = {result['io_pct_of_tensors']:.1f} % of the tensors' time")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
