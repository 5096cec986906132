"""A generator as a flat list of layers: the one description the engine's runners are built from.

Each generator's `steps()` lists its layers next to the `forward` it mirrors (tests check that `run` over
the steps equals `forward`, bit for bit, so the two cannot drift). A step is a spatial layer applied to
one activation, or to a channel concatenation of several, followed by the pointwise tail

    y = act(norm(layer(x))) + residual          (act: ReLU or nothing; residual added after it)

which is what the fused `instyle::instance_norm` op computes when `norm` is an instance norm. Activation
0 is the generator's input; step i (counting from 1) writes activation i.

A step also says what its layer is (`kind`, the convolution with its kernel and stride, the resampling
factor), so runners need not know the generator's module classes:
  conv      pad by kernel // 2, then a stride-s convolution (pad and conv are `layer`)
  upconv    nearest x2, pad, stride-1 convolution
  tconv     stride-2 transposed convolution (exactly doubles the size)
  pool      average pooling by `factor` (the pyramid's scale inputs)
  upsample  nearest x2, nothing else
and from that its geometry: `ratio` (output size / input size) and `halo` (input pixels beyond an output
tile's own footprint, per side, that the layer reads), which the tiled runner cuts windows with.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

KINDS = ("conv", "upconv", "tconv", "pool", "upsample")


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    kind: str                                   # one of KINDS
    layer: Callable[[torch.Tensor], torch.Tensor]  # the spatial op; pads itself (the true border at image edges)
    srcs: tuple[int, ...]                       # activations concatenated (channels) as the layer's input
    channels: int                               # output channels
    conv: nn.Module | None = None               # the Conv2d / ConvTranspose2d inside `layer` (None: no weights)
    factor: int = 1                             # pooling factor of a "pool" step
    norm: nn.Module | None = None               # an instance norm (global statistics) or a local norm
    relu: bool = False
    residual: int | None = None                 # activation added after the activation function

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"step {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def kernel(self) -> int:
        return 1 if self.conv is None else self.conv.kernel_size[0]

    @property
    def stride(self) -> int:
        return 1 if self.conv is None or self.kind == "tconv" else self.conv.stride[0]

    @property
    def instance_norm(self) -> bool:
        """A norm with global statistics: instance norm, or conditional instance norm (models/norm.py)."""
        return isinstance(self.norm, nn.InstanceNorm2d) or getattr(self.norm, "conditional", False)

    @property
    def ratio(self) -> Fraction:
        """Output size / input size."""
        if self.kind in ("upconv", "tconv", "upsample"):
            return Fraction(2)
        if self.kind == "pool":
            return Fraction(1, self.factor)
        return Fraction(1, self.stride)

    @property
    def halo(self) -> int:
        """Input pixels an output tile reads beyond its own footprint, per side (conservative where simpler)."""
        reach = self.kernel // 2
        if self.kind == "conv":
            return -(-reach // self.stride) * self.stride  # windows of a stride-s conv start on multiples of s
        if self.kind == "upconv":
            return -(-reach // 2)           # `reach` upsampled pixels = ceil(reach / 2) input pixels
        if self.kind == "tconv":
            return (self.kernel + 1) // 2   # output o gathers inputs (o + p - j) / 2, j < k
        return 0


class Steps:
    """Builds a step list: `add` appends one step and returns the index of the activation it writes."""

    def __init__(self):
        self.steps: list[Step] = []

    def add(self, name: str, kind: str, layer, srcs: int | tuple[int, ...], channels: int | None = None, *,
            conv: nn.Module | None = None, factor: int = 1, norm: nn.Module | None = None, relu: bool = False,
            residual: int | None = None) -> int:
        srcs = (srcs,) if isinstance(srcs, int) else tuple(srcs)
        if channels is None:
            channels = conv.out_channels
        norm = None if isinstance(norm, nn.Identity) else norm
        self.steps.append(Step(name, kind, layer, srcs, channels, conv, factor, norm, relu, residual))
        return len(self.steps)


Post = Callable[[Step, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def eager_post(step: Step, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """The pointwise tail in plain PyTorch (what the generators' forward computes)."""
    if step.norm is not None:
        y = step.norm(y)
    if step.relu:
        y = torch.relu(y)
    return y if residual is None else y + residual


def last_use(steps: list[Step]) -> dict[int, int]:
    """activation -> index of the last step that reads it."""
    last: dict[int, int] = {}
    for i, step in enumerate(steps, 1):
        for a in step.srcs + (() if step.residual is None else (step.residual,)):
            last[a] = i
    return last


def run(steps: list[Step], x: torch.Tensor, post: Post = eager_post) -> torch.Tensor:
    """Execute a step list on whole tensors, dropping each activation after its last use."""
    last = last_use(steps)
    acts: dict[int, torch.Tensor] = {0: x}
    for i, step in enumerate(steps, 1):
        inp = torch.cat([acts[s] for s in step.srcs], 1) if len(step.srcs) > 1 else acts[step.srcs[0]]
        acts[i] = post(step, step.layer(inp), None if step.residual is None else acts[step.residual])
        del inp
        for a in [a for a in acts if last.get(a, 0) <= i and a != len(steps)]:
            del acts[a]
    return acts[len(steps)]
