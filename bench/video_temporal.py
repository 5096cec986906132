"""Flicker of frame-by-frame stylization with and without --temporal (instyle.temporal.FlowBlend), and its cost.

    python -m instyle.bench.video_temporal [--model M] [--size 320x240] [--frames 48] [--step 3,1]
                                           [--weight 0.5] [--backend eager]

The clip: a camera pan over a real photo of the shared data (resized to 1024 px wide), `--size` windows
moving `--step` px (right, down) per frame, written as H.264 crf 18 and decoded back. Every frame is
stylized once ("off"); FlowBlend then runs over (input, stylized) frames in order ("on").

Flicker figures, mean |a - b| over RGB 0..255, frames 1..n-1:
  gt    out_t(x, y) vs out_{t-1}(x + dx, y + dy) over the pixels both windows see: the true motion is a
        known integer shift, so this needs no flow and is not biased towards the method
  flow  out_t vs warp(out_{t-1}) by DIS flow (preset medium, not the method's own "fast" instance) over
        the pixels its forward-backward check marks non-occluded: the figure as usually defined
Also printed: the same figures for the input frames (codec noise floor), the mean |on - off| (how far
the blend moves away from per-frame stylization), FlowBlend's median ms/frame and the stylizer's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def gt_flicker(frames: list, dx: int, dy: int) -> float:
    import numpy as np

    h, w = frames[0].shape[:2]
    d = [np.abs(b[:h - dy, :w - dx].astype(np.float32) - a[dy:, dx:].astype(np.float32)).mean()
         for a, b in zip(frames, frames[1:])]
    return float(np.mean(d))


def flow_flicker(frames: list, inputs: list) -> float:
    import cv2
    import numpy as np

    from instyle.temporal import consistent, warp

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    total, count = 0.0, 0.0
    for t in range(1, len(frames)):
        g0, g1 = (cv2.cvtColor(inputs[i], cv2.COLOR_RGB2GRAY) for i in (t - 1, t))
        back, fwd = dis.calc(g1, g0, None), dis.calc(g0, g1, None)
        m = consistent(back, fwd)[..., None]
        diff = np.abs(frames[t].astype(np.float32) - warp(frames[t - 1].astype(np.float32), back))
        total += float((diff * m).sum())
        count += float(m.sum()) * 3
    return total / max(count, 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m instyle.bench.video_temporal", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model (default: the shared data's random-transformernet.pth)")
    p.add_argument("--size", default="320x240")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--step", default="3,1", help="pan in px per frame: DX,DY (default 3,1)")
    p.add_argument("--weight", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backend", default="eager")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import instyle
    from instyle import timing
    from instyle.bench.video_overhead import PHOTO, decode_rgb, make_pan
    from instyle.paths import data_dir
    from instyle.specs import parse_size
    from instyle.temporal import FlowBlend

    width, height = parse_size(args.size)
    dx, dy = (int(v) for v in args.step.split(","))
    model = args.model or str(data_dir() / "pretrained" / "random-transformernet.pth")
    stylizer = instyle.load(model, backend=args.backend, device=args.device, precision="fp32", tile="off")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_pan(Path(tmp) / "pan.mp4", data_dir() / PHOTO, width, height, args.frames, step=(dx, dy),
                        audio=False)
        inputs = decode_rgb(clip)

    def stylize(x):  # N,3,H,W uint8 -> N,H,W,3 uint8 array
        return stylizer(x).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    off, styl_ms = [], []
    for i in range(0, len(inputs), args.batch):
        x = torch.from_numpy(np.stack(inputs[i:i + args.batch])).permute(0, 3, 1, 2)
        y, seconds = timing.wall(stylize, x, device=stylizer.device)
        styl_ms.append(1e3 * seconds / len(y))
        off += list(y)
    blend, on, blend_ms = FlowBlend(args.weight), [], []
    for src, y in zip(inputs, off):
        blended, seconds = timing.wall(blend, src, y)
        on.append(blended)
        blend_ms.append(1e3 * seconds)
    result = {
        "model": Path(model).name, "size": f"{width}x{height}", "frames": len(inputs), "step": [dx, dy],
        "weight": args.weight, "backend": args.backend, "device": str(stylizer.device),
        "flicker_gt": {"input": gt_flicker(inputs, dx, dy), "off": gt_flicker(off, dx, dy),
                       "on": gt_flicker(on, dx, dy)},
        "flicker_flow": {"input": flow_flicker(inputs, inputs), "off": flow_flicker(off, inputs),
                         "on": flow_flicker(on, inputs)},
        "on_vs_off": float(np.mean([np.abs(a.astype(np.float32) - b).mean() for a, b in zip(on, off)])),
        "temporal_ms_per_frame": timing.summary(blend_ms[1:])["median_ms"],
        "stylize_ms_per_frame": timing.summary(styl_ms)["median_ms"],
    }
    g, f = result["flicker_gt"], result["flicker_flow"]
    print(f"{len(inputs)} frames {width}x{height}, pan {dx},{dy} px/frame, {Path(model).name}, weight {args.weight}")
    print(f"  flicker (true motion):  input {g['input']:.2f}  off {g['off']:.2f}  on {g['on']:.2f}"
          f"  ({100 * (1 - g['on'] / g['off']):.0f} % less)")
    print(f"  flicker (DIS flow):     input {f['input']:.2f}  off {f['off']:.2f}  on {f['on']:.2f}"
          f"  ({100 * (1 - f['on'] / f['off']):.0f} % less)")
    print(f"  mean |on - off| {result['on_vs_off']:.2f}; cost {result['temporal_ms_per_frame']:.1f} ms/frame "
          f"(stylize {result['stylize_ms_per_frame']:.1f} ms/frame)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
