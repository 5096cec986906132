"""How much memory a run needs and how much there is: the numbers behind `tile="auto"`.

Estimates walk a step plan (engine/plan.py) and count elements; they are deliberately simple upper
bounds of what PyTorch allocates, not measurements. Free memory is torch.cuda.mem_get_info on CUDA and
MemAvailable from /proc/meminfo on the host (no psutil dependency).
"""
from __future__ import annotations

import math
import os
from fractions import Fraction

import torch

from . import plan

HEADROOM = 0.8  # use at most this fraction of what is reported free


def host_available_bytes() -> int:
    """MemAvailable (what can be allocated without swapping), falling back to free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not tile on account of memory


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def shapes(steps: list[plan.Step], n: int, c: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """N,C,H,W of every activation of the plan (index 0 is the input)."""
    out = []
    for ch, s in zip(plan.channels(steps, c), plan.scales(steps)):
        hh, ww = Fraction(h) * s, Fraction(w) * s
        assert hh.denominator == 1 and ww.denominator == 1, f"size {h}x{w} is not a multiple of the strides"
        out.append((n, ch, int(hh), int(ww)))
    return out


def _numel(shape) -> int:
    n, c, h, w = shape
    return n * c * h * w


def untiled_bytes(steps: list[plan.Step], shape: tuple[int, ...], itemsize: int) -> int:
    """Peak bytes of a whole-tensor run: live activations, plus per step the layer's temporaries (the
    padded or upsampled copy of its input, the concatenation) and the pointwise tail's output."""
    sizes = [_numel(s) for s in shapes(steps, *shape)]
    last = plan.last_use(steps)
    live, peak = {0}, 0
    for i, step in enumerate(steps, 1):
        inp = sum(sizes[s] for s in step.srcs)
        temp = inp * max(1, int(step.ratio) ** 2) * 2 + (inp if len(step.srcs) > 1 else 0) + sizes[i]
        peak = max(peak, sum(sizes[a] for a in live) + sizes[i] + temp)
        live = {a for a in live | {i} if last.get(a, 0) > i}
    return peak * itemsize


def store_peak_elements(steps: list[plan.Step], shape: tuple[int, ...]) -> int:
    """Peak elements of the inter-layer stores of a tiled run: the activations alive at once (the
    input, which the caller owns, excluded; the final output included)."""
    sizes = [_numel(s) for s in shapes(steps, *shape)]
    last = plan.last_use(steps)
    live, peak = set(), 0
    for i in range(1, len(steps) + 1):
        peak = max(peak, sum(sizes[a] for a in live) + sizes[i])
        live = {a for a in live | {i} if last.get(a, 0) > i}
    return peak


def _width(step: plan.Step, chans: list[int]) -> Fraction:
    """Elements per output pixel a step's tile holds: its output channels, or its input channels per
    output pixel (C_in / ratio^2), whichever is more."""
    return max(Fraction(step.channels), sum(chans[s] for s in step.srcs) / step.ratio ** 2)


def tile_sides(steps: list[plan.Step], in_channels: int, tile: int) -> list[int]:
    """Each step's output tile side for an image-pixel `tile`, at the same element budget everywhere.

    The budget is what the widest step holds when tiles simply scale with resolution (tile * scale):
    E = tile^2 * max(width * scale^2); JohnsonNet: E = 32 * tile^2. Each step then gets the side
    sqrt(E / width): full-resolution steps get `tile`, the 128-channel residual blocks at 1/4 scale
    get tile / 2 instead of tile / 4 (4x fewer, larger tiles: convolutions run far better on them).
    Sides are even (upsampling windows start on whole input pixels) and at least 16."""
    chans, scs = plan.channels(steps, in_channels), plan.scales(steps)
    widths = [_width(step, chans) for step in steps]
    budget = tile * tile * max(w * scs[i] ** 2 for i, w in enumerate(widths, 1))
    return [max(16, int(math.isqrt(int(budget / w))) // 2 * 2) for w in widths]


def tile_bytes(steps: list[plan.Step], shape: tuple[int, ...], tile: int, itemsize: int) -> int:
    """Device working set of one tile (the largest step): the input window with its halo and its
    padded/upsampled copy, the layer output, and the fp32 copies the statistics use."""
    n, c = shape[:2]
    chans = plan.channels(steps, c)
    peak = 0
    for i, (step, t) in enumerate(zip(steps, tile_sides(steps, c, tile)), 1):
        side_in = int(t / step.ratio) + 2 * step.halo + 2
        inp = sum(chans[s] for s in step.srcs) * side_in ** 2 * max(1, int(step.ratio) ** 2) * 2
        out = chans[i] * int(side_in * step.ratio) ** 2
        peak = max(peak, n * (inp * itemsize + out * (itemsize + 8)))
    return peak


def auto_tile(steps: list[plan.Step], shape: tuple[int, ...], device: torch.device, itemsize: int) -> int:
    """The largest tile side (px) whose working set fits a quarter of the free memory."""
    budget = available_bytes(device) // 4
    for side in (2048, 1024, 512, 256, 128):
        if tile_bytes(steps, shape, side, itemsize) <= budget:
            return side
    return 64
