"""Exact tiled inference: a layer-by-layer sweep over tiles that gives the untiled result.

Why it can be exact. Instance norm needs each channel's statistics over the whole image, so tiles cannot
simply be pushed through the network one by one. Instead the plan (engine/plan.py) runs one step at a
time over the whole image, tile by tile:

  1. For each output tile, cut the input window it reads (the tile's footprint plus the layer's halo,
     clipped to the image), run the layer on it, crop the exact tile. At the image border the window
     ends where the image ends, so the layer's own padding (reflect or zero) sees what it sees untiled;
     inside, the halo makes every kept pixel's receptive field complete. Convolutions are local, so the
     tile equals the same region of the untiled layer output.
  2. Instance-norm steps fold each tile's per-(n, c) count, mean and M2 into running statistics (Chan's
     parallel formula, fp64) and store the raw tile minus a per-channel shift (the first tile's mean,
     which keeps 16-bit storage precise: stored values are deviations, not raw magnitudes).
  3. When the sweep is done the statistics are global; a second pass over row bands normalizes the store
     in place: y = act(v * scale + offset) + residual with scale = rstd * w and
     offset = (shift - mean) * scale + b, computed in fp32 on the compute device.
  Local norms (BatchNorm in eval mode, none) are applied per tile in step 1.
  A conditional instance norm with a per-pixel style map (regions, models/norm.py) is normalized the same
  way, then scaled and shifted by per-pixel (gamma, beta) from the map resized to the layer's resolution
  (resize_style_map, the function the untiled forward uses) and cut to the band: the same values.

Each step's input is released as soon as its last reader is done. Device memory holds only tile
windows (bounded by the tile size, see memory.tile_bytes) plus the caller's input and the final output;
inter-layer activations live in host memory (pinned, when the compute device is CUDA).

Host memory arithmetic, JohnsonNet (width w = 32), P = N*H*W pixels, elements alive at once:
  conv1 -> w*P; conv2: in w*P + out w*P/2; conv3/res blocks: at most 3 * w*P/4 (input, hidden,
  output; the residual is the input); deconv1: w*P/4 + w*P/2; deconv2: w*P/2 + w*P; deconv3: w*P + 3P.
  Peak = 1.5 * w * P elements (conv2 and deconv2). For a 12000x9000 photo (P = 108e6): 5.18e9 elements,
  20.7 GB in fp32 or 10.4 GB in fp16/bf16, plus input and output (3P fp32 each: 1.3 GB + 1.3 GB).
  So `storage=None` (choose_storage) keeps fp32 stores when they fit in 80% of MemAvailable next to one
  tile working set, else 16-bit stores (fp16; bf16 when computing in bf16). On the CPU of a 24 GB machine
  the 108 Mpx photo then needs 10.4 GB of stores + 2.6 GB input/output + one 2048-px tile working set
  (memory.tile_bytes: 3.8 GB, a conservative bound) = 16.8 GB: no swap. Beyond the store arithmetic,
  resident memory grows by about one tile's temporaries and allocator slack, since freed heap pages are
  trimmed after each tile row and step. On CUDA the device holds the 1.3 GB input,
  the output and one tile working set (0.6 GB at 1024-px fp16 tiles): far below 24 GB; the stores live in
  pinned host memory. fp16 stores overflow only for deviations beyond 65504: checked, a clear error.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from fractions import Fraction

import torch

from instyle.models.norm import resize_style_map

from . import memory, plan

FP16_MAX = 65504.0


class _Stats:
    """Running per-(n, c) count, mean and M2 (fp64), merged tile by tile with Chan's formula."""

    def __init__(self):
        self.count, self.mean, self.m2, self.shift = 0, None, None, None

    def add(self, y: torch.Tensor) -> torch.Tensor:
        """Fold the tile in; return it in fp32 minus the shift (what the store keeps)."""
        t = y.float()
        n = t.shape[2] * t.shape[3]
        var, m = torch.var_mean(t, dim=(2, 3), correction=0)  # two-pass within the tile, fp32
        m2 = var.double() * n
        if self.shift is None:
            self.shift = m
            self.count, self.mean, self.m2 = n, m.double(), m2
        else:
            total = self.count + n
            delta = m.double() - self.mean
            self.mean += delta * (n / total)
            self.m2 += m2 + delta.square() * (self.count * n / total)
            self.count = total
        return t - self.shift[..., None, None]

    def affine(self, norm: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """scale, offset (fp32, N x C x 1 x 1) mapping a stored value v to the normalized output (a conditional
        norm: to the normalized value before its per-pixel gamma and beta)."""
        rstd = (self.m2 / self.count + norm.eps).rsqrt()
        if getattr(norm, "conditional", False):
            return rstd.float()[..., None, None], ((self.shift.double() - self.mean) * rstd).float()[..., None, None]
        scale = rstd if norm.weight is None else rstd * norm.weight.double()
        offset = (self.shift.double() - self.mean) * scale
        if norm.bias is not None:
            offset = offset + norm.bias.double()
        return scale.float()[..., None, None], offset.float()[..., None, None]


def _tiles(size: int, side: int) -> list[tuple[int, int]]:
    return [(o, min(o + side, size)) for o in range(0, size, side)]


def _window(o0: int, o1: int, step: plan.Step, size_in: int) -> tuple[int, int, int]:
    """Input rows [a, b) an output span [o0, o1) reads, and where the span starts in the layer's output."""
    a, b = Fraction(o0) / step.ratio - step.halo, Fraction(o1) / step.ratio + step.halo
    assert a.denominator == 1 and b.denominator == 1, "tile boundaries must fall on whole input pixels"
    a, b = max(0, int(a)), min(size_in, int(b))
    first = Fraction(o0) - a * step.ratio
    assert first.denominator == 1
    return a, b, int(first)


def _libc_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def trim_host_heap() -> None:
    """Give freed heap pages back to the OS. glibc serves tile-sized temporaries from its heap once
    its dynamic mmap threshold has grown, and keeps the freed pages, so without this resident memory
    creeps up by several tile working sets over a large image instead of staying near one."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _empty(shape, dtype, device: torch.device, pin: bool) -> torch.Tensor:
    if pin:
        try:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        except RuntimeError:  # pinning that much can fail; pageable memory still works, only slower
            pass
    return torch.empty(shape, dtype=dtype, device=device)


def choose_storage(steps: list[plan.Step], shape: tuple[int, ...], dtype: torch.dtype,
                   reserve: int = 0) -> torch.dtype:
    """fp32 stores when they fit in host memory (see the module docstring), else 16-bit. `reserve`:
    host bytes needed besides the stores (the tile working set when computing on the CPU)."""
    low = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    elements = memory.store_peak_elements(steps, shape)
    budget = memory.HEADROOM * memory.host_available_bytes() - reserve
    if dtype == torch.float32 and elements * 4 <= budget:
        return torch.float32
    if elements * 2 > budget:
        raise MemoryError(f"tiled inference of a {shape[0]}x{shape[2]}x{shape[3]} batch needs about "
                          f"{elements * 2 / 1e9:.1f} GB of host memory for its activations, "
                          f"{budget / 1e9:.1f} GB are available: use a smaller image or batch")
    return low


def run_tiled(steps: list[plan.Step], x: torch.Tensor, tile: int, *, dtype: torch.dtype | None = None,
              storage: torch.dtype | None = None, channels_last: bool = False,
              style_map: torch.Tensor | None = None) -> torch.Tensor:
    """Run the plan on x (N,C,H,W, padded to the strides, on the compute device) in tiles of `tile`
    image pixels; returns the raw fp32 output on x's device. `storage` is the inter-layer store dtype
    (None: choose_storage); `channels_last` lays the device windows out as the model's weights are.
    `style_map` (N x S x H x W, padded as x): the per-pixel styles of a plan with conditional norms."""
    if any(getattr(s.norm, "conditional", False) for s in steps) and style_map is None:
        raise ValueError("tiled inference of a multi-style plan needs a style map (N x S x H x W)")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dtype = dtype or x.dtype
    device = x.device
    host = torch.device("cpu")
    if storage is None:
        reserve = memory.tile_bytes(steps, tuple(x.shape), tile, dtype.itemsize) if device.type == "cpu" else 0
        storage = choose_storage(steps, tuple(x.shape), dtype, reserve)
    shapes = memory.shapes(steps, *x.shape)
    sides = memory.tile_sides(steps, x.shape[1], tile)
    last = plan.last_use(steps)
    acts: dict[int, torch.Tensor] = {0: x}
    for i, step in enumerate(steps, 1):
        final = i == len(steps)
        out = (torch.empty(shapes[i], dtype=torch.float32, device=device) if final
               else _empty(shapes[i], storage, host, pin=device.type == "cuda"))
        side = sides[i - 1]
        stats = _Stats() if step.instance_norm else None
        residual = None if step.residual is None else acts[step.residual]
        h_in, w_in = shapes[step.srcs[0]][2:]
        for r0, r1 in _tiles(shapes[i][2], side):
            a, b, fr = _window(r0, r1, step, h_in)
            for c0, c1 in _tiles(shapes[i][3], side):
                c, d, fc = _window(c0, c1, step, w_in)
                win = [acts[s][:, :, a:b, c:d].to(device, dtype, memory_format=fmt) for s in step.srcs]
                y = step.layer(torch.cat(win, 1) if len(win) > 1 else win[0])
                del win
                y = y[:, :, fr:fr + r1 - r0, fc:fc + c1 - c0]
                if stats is not None:
                    y = stats.add(y)
                else:
                    r = None if residual is None else residual[:, :, r0:r1, c0:c1].to(device, dtype)
                    y = plan.eager_post(step, y, r)
                if out.dtype == torch.float16 and y.abs().amax() > FP16_MAX:
                    raise OverflowError(f"tiled inference: activations of step {step.name} exceed the fp16 "
                                        "range of the 16-bit host store; use a smaller image (fp32 stores)")
                out[:, :, r0:r1, c0:c1].copy_(y)
                del y
            trim_host_heap()
        if stats is not None:
            maps = None if not getattr(step.norm, "conditional", False) else \
                resize_style_map(style_map.to(device), tuple(shapes[i][2:]))
            _normalize(out, step, stats, residual, device, side, maps)
        acts[i] = out
        del out, residual
        for k in [k for k in acts if 0 < k <= i and last.get(k, 0) <= i and not (final and k == i)]:
            del acts[k]  # free each store as soon as its last reader is done
        trim_host_heap()
    return acts[len(steps)]


def _normalize(out: torch.Tensor, step: plan.Step, stats: _Stats, residual: torch.Tensor | None,
               device: torch.device, side: int, style_map: torch.Tensor | None = None) -> None:
    """In place, in row bands of about one tile's worth of elements, on the compute device. `style_map`: a
    conditional norm's per-pixel styles at this layer's resolution."""
    scale, offset = stats.affine(step.norm)
    rows = max(1, side * side // out.shape[3])
    for r0 in range(0, out.shape[2], rows):
        band = torch.addcmul(offset, out[:, :, r0:r0 + rows].to(device), scale)  # fp32
        if style_map is not None:
            gamma, beta = step.norm.affine_map(style_map[:, :, r0:r0 + rows])
            band = torch.addcmul(beta, band, gamma)
        if step.relu:
            band.relu_()
        if residual is not None:
            band.add_(residual[:, :, r0:r0 + rows].to(device, torch.float32))
        if out.dtype == torch.float16 and band.abs().amax() > FP16_MAX:
            raise OverflowError(f"tiled inference: activations of step {step.name} exceed the fp16 range")
        out[:, :, r0:r0 + rows].copy_(band)
