"""Generators as a flat list of steps: the one description the fused and the tiled runners share.

A step is a spatial layer (a convolution with its padding, up- or down-sampling) applied to one
activation, or to a channel concatenation of several, followed by the pointwise tail

    y = act(norm(layer(x))) + residual          (act: ReLU or nothing; residual added after it)

which is exactly what the fused `instyle::instance_norm` op computes when `norm` is an instance norm.
Activation 0 is the generator's input; step i (counting from 1) writes activation i.

Every step also carries its geometry, so the tiled runner can cut windows without knowing layer types:
`ratio` = output size / input size (1, 2 or 1/s) and `halo` = how many input pixels beyond an output
tile's own footprint (on each side) the layer reads. Halos are conservative where that is simpler
(a larger window only costs a few extra pixels; the tiled runner crops).

`build(model)` knows JohnsonNet and PyramidNet; `run(steps, x, post)` executes a plan on whole tensors
(`post` is the pointwise tail: eager PyTorch or the fused kernel). Tests check that an eager run of the
plan equals model.forward, so the plan cannot drift from the reference.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from instyle.models import JohnsonNet, PyramidNet
from instyle.models.johnson import ConvLayer, TransposedConvLayer, UpsampleConvLayer


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    layer: Callable[[torch.Tensor], torch.Tensor]  # spatial op; pads itself (the true border at image edges)
    ratio: Fraction                                # output size / input size
    halo: int                                      # input pixels read beyond the tile's footprint, per side
    srcs: tuple[int, ...]                          # activations concatenated (channels) as the layer's input
    channels: int                                  # output channels
    norm: nn.Module | None = None                  # InstanceNorm2d (global statistics) or a local norm
    relu: bool = False
    residual: int | None = None                    # activation added after the activation function

    @property
    def instance_norm(self) -> bool:
        return isinstance(self.norm, nn.InstanceNorm2d)


Post = Callable[[Step, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def eager_post(step: Step, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """The pointwise tail in plain PyTorch (what the reference modules compute)."""
    if step.norm is not None:
        y = step.norm(y)
    if step.relu:
        y = torch.relu(y)
    return y if residual is None else y + residual


def run(steps: list[Step], x: torch.Tensor, post: Post = eager_post) -> torch.Tensor:
    """Execute a plan on whole tensors, dropping each activation after its last use."""
    last = last_use(steps)
    acts: dict[int, torch.Tensor] = {0: x}
    for i, step in enumerate(steps, 1):
        inp = torch.cat([acts[s] for s in step.srcs], 1) if len(step.srcs) > 1 else acts[step.srcs[0]]
        acts[i] = post(step, step.layer(inp), None if step.residual is None else acts[step.residual])
        del inp
        for a in [a for a in acts if last.get(a, 0) <= i and a != len(steps)]:
            del acts[a]
    return acts[len(steps)]


def last_use(steps: list[Step]) -> dict[int, int]:
    """activation -> index of the last step that reads it."""
    last: dict[int, int] = {}
    for i, step in enumerate(steps, 1):
        for a in step.srcs + (() if step.residual is None else (step.residual,)):
            last[a] = i
    return last


def scales(steps: list[Step]) -> list[Fraction]:
    """Resolution of every activation relative to the input (index 0 is the input)."""
    out = [Fraction(1)]
    for step in steps:
        out.append(out[step.srcs[0]] * step.ratio)
    return out


def channels(steps: list[Step], in_channels: int) -> list[int]:
    return [in_channels] + [s.channels for s in steps]


# ---------------------------------------------------------------------------------------------------
# Geometry of the spatial layers.


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _johnson_layer(layer: nn.Module) -> tuple[Fraction, int]:
    k = layer.conv2d.kernel_size[0]
    if isinstance(layer, ConvLayer):
        s = layer.conv2d.stride[0]
        # windows of a stride-s conv must start on a multiple of s: round the halo up to one
        return Fraction(1, s), _ceil_to(k // 2, s)
    if isinstance(layer, UpsampleConvLayer):
        return Fraction(2), -(-(k // 2) // 2)  # k//2 upsampled pixels = ceil(k//2 / 2) input pixels
    if isinstance(layer, TransposedConvLayer):
        return Fraction(2), (k + 1) // 2      # output o gathers inputs (o + p - j) / 2, j < k
    raise ValueError(f"no tiling geometry for layer {type(layer).__name__}")


def _norm(module: nn.Module) -> nn.Module | None:
    return None if isinstance(module, nn.Identity) else module


def _johnson(m: JohnsonNet) -> list[Step]:
    steps: list[Step] = []

    def add(name, layer, src, norm, relu, residual=None):
        ratio, halo = _johnson_layer(layer)
        steps.append(Step(name, layer, ratio, halo, (src,), layer.conv2d.out_channels,
                          _norm(norm) if norm is not None else None, relu, residual))
        return len(steps)

    y = add("conv1", m.conv1, 0, m.in1, True)
    y = add("conv2", m.conv2, y, m.in2, True)
    y = add("conv3", m.conv3, y, m.in3, True)
    for name in m.res_names:
        block = getattr(m, name)
        h = add(f"{name}.conv1", block.conv1, y, block.in1, True)
        y = add(f"{name}.conv2", block.conv2, h, block.in2, False, residual=y)
    y = add("deconv1", m.deconv1, y, m.in4, True)
    y = add("deconv2", m.deconv2, y, m.in5, True)
    add("deconv3", m.deconv3, y, None, False)
    return steps


class _Pool(nn.Module):
    """The pyramid's input for one scale (average pooling, noise rescaled): a local op, halo 0."""

    def __init__(self, model: PyramidNet, ratio: int):
        super().__init__()
        self.model, self.ratio = model, ratio

    def forward(self, x):
        return self.model.scale_input(x, self.ratio)


class _Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


def _pyramid(m: PyramidNet) -> list[Step]:
    steps: list[Step] = []

    def add(name, layer, ratio, halo, srcs, ch, norm=None, relu=False):
        steps.append(Step(name, layer, ratio, halo, srcs, ch, norm, relu))
        return len(steps)

    def block(name, seq: nn.Sequential, srcs):
        mods = list(seq)
        assert len(mods) == 11, f"unexpected pyramid block layout in {name}"
        for j, (lo, hi) in enumerate(((0, 2), (4, 6), (8, 9))):
            conv = mods[hi - 1]
            halo = mods[lo].padding[0] if hi - lo == 2 else 0
            layer = nn.Sequential(*mods[lo:hi]) if hi - lo == 2 else conv
            srcs = (add(f"{name}.{j}", layer, Fraction(1), halo, srcs, conv.out_channels,
                        _norm(mods[hi]), True),)
        return srcs[0]

    cin = m.noise_channels + (3 if m.mode == "style" else 0)
    y = None
    for k, (ratio, seq) in enumerate(zip(m.ratios, m.scales)):
        src = add(f"scales.{k}.pool", _Pool(m, ratio), Fraction(1, ratio), 0, (0,), cin) if ratio > 1 else 0
        cur = block(f"scales.{k}", seq, (src,))
        if y is not None:
            up = add(f"join_norms.{k - 1}", _Upsample(), Fraction(2), 0, (y,), steps[y - 1].channels,
                     _norm(m.join_norms[k - 1]))
            cur = block(f"joins.{k - 1}", m.joins[k - 1], (up, cur))
        y = cur
    add("to_rgb", m.to_rgb, Fraction(1), 0, (y,), m.to_rgb.out_channels)
    return steps


def build(model: nn.Module) -> list[Step]:
    """The step list of a JohnsonNet or PyramidNet (ValueError for other modules)."""
    if isinstance(model, JohnsonNet):
        return _johnson(model)
    if isinstance(model, PyramidNet):
        return _pyramid(model)
    raise ValueError(f"the engine has no step plan for {type(model).__name__} (known: JohnsonNet, PyramidNet)")


def in_channels(model: nn.Module) -> int:
    if isinstance(model, PyramidNet):
        return model.noise_channels + (3 if model.mode == "style" else 0)
    return 3
