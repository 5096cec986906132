"""Ulyanov et al.'s multi-scale "pyramid" generator (texture_nets' pyramid model).

The input is average-pooled to K scales (ratios 32..1). Each scale goes through a conv3x3-norm-ReLU x2,
conv1x1-norm-ReLU block; scales are joined coarse to fine by nearest x2 upsampling, a norm, and channel
concatenation with the next finer scale's block, whose channels grow by `channels` per scale; a final
1x1 conv maps to RGB.

Modes: `style` takes a content image (RGB 0..255, plus optional noise channels); `texture` takes only
noise `z` (N x noise_channels x H x W) and produces a texture of that size (`sample()` draws z).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .graph import Step, Steps
from .norm import apply_norm, default_style_weights, make_norm, make_pad

MODES = ("style", "texture")


class ConvBlock(nn.Sequential):
    """conv3x3-norm-ReLU x2, conv1x1-norm-ReLU; a Sequential whose norms may take style weights."""

    # (pad, conv, norm) positions of the three conv-norm-ReLU layers, as _conv_block lays them out
    LAYERS = ((0, 1, 2), (4, 5, 6), (None, 8, 9))

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        norms = [self[n] for _, _, n in self.LAYERS]
        for module in self:
            x = apply_norm(module, x, style_weights) if module in norms else module(x)
        return x

    def add_steps(self, g: Steps, name: str, srcs: int | tuple[int, ...]) -> int:
        """Append this block's three layers to a step list (models/graph.py); returns its output."""
        for j, (pad, conv, norm) in enumerate(self.LAYERS):
            layer = self[conv] if pad is None else nn.Sequential(self[pad], self[conv])
            srcs = g.add(f"{name}.{j}", "conv", layer, srcs, conv=self[conv], norm=self[norm], relu=True)
        return srcs


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _conv_block(cin: int, cout: int, norm: str, padding: str, styles: int) -> ConvBlock:
    return ConvBlock(
        make_pad(padding, 1), nn.Conv2d(cin, cout, 3), make_norm(norm, cout, styles), nn.ReLU(),
        make_pad(padding, 1), nn.Conv2d(cout, cout, 3), make_norm(norm, cout, styles), nn.ReLU(),
        nn.Conv2d(cout, cout, 1), make_norm(norm, cout, styles), nn.ReLU(),
    )


class PyramidNet(nn.Module):
    arch = "pyramid"

    def __init__(
        self,
        ratios: tuple[int, ...] | list[int] = (32, 16, 8, 4, 2, 1),
        channels: int = 8,
        norm: str = "instance",
        padding: str = "reflect",
        mode: str = "style",
        noise_channels: int | None = None,
        styles: int = 1,
    ):
        super().__init__()
        ratios = [int(r) for r in ratios]
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not ratios or ratios[-1] != 1 or any(a != 2 * b for a, b in zip(ratios, ratios[1:])):
            raise ValueError(f"ratios must halve down to 1 (e.g. 32,16,8,4,2,1), got {ratios}")
        if noise_channels is None:
            noise_channels = 3 if mode == "texture" else 0
        if mode == "texture" and noise_channels < 1:
            raise ValueError("texture mode needs noise_channels >= 1")
        if styles < 1:
            raise ValueError(f"styles must be >= 1, got {styles}")
        self.config = dict(ratios=ratios, channels=channels, norm=norm, padding=padding, mode=mode,
                           noise_channels=noise_channels)
        if styles > 1:
            self.config["styles"] = styles
        self.styles = styles
        self.ratios = ratios
        self.mode = mode
        self.noise_channels = noise_channels
        self.in_channels = cin = noise_channels + (3 if mode == "style" else 0)
        self.scales = nn.ModuleList(_conv_block(cin, channels, norm, padding, styles) for _ in ratios)
        # join k merges the k+1 coarsest scales: upsampled (k+1)*channels... see forward
        self.join_norms = nn.ModuleList(make_norm(norm, channels * (k + 1), styles) for k in range(len(ratios) - 1))
        self.joins = nn.ModuleList(
            _conv_block(channels * (k + 2), channels * (k + 2), norm, padding, styles) for k in range(len(ratios) - 1)
        )
        self.to_rgb = nn.Conv2d(channels * len(ratios), 3, 1)
        # pooling by the coarsest ratio, and reflection padding there, need 2 pixels at that scale
        self.stride_multiple = ratios[0]
        self.min_size = 2 * ratios[0]

    def sample_noise(self, n: int, height: int, width: int, *, generator: torch.Generator | None = None,
                     device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(n, self.noise_channels, height, width, generator=generator, device=device, dtype=dtype)

    def scale_input(self, x: torch.Tensor, ratio: int) -> torch.Tensor:
        """The input of the scale `ratio`: x average-pooled by `ratio` (noise rescaled to unit variance)."""
        if ratio == 1:
            return x
        pooled = F.avg_pool2d(x, ratio)
        if self.mode == "texture":
            return pooled * ratio  # averaging r*r unit-variance samples shrinks std by r: restore it
        if self.noise_channels:
            image, noise = pooled.split([3, self.noise_channels], dim=1)
            return torch.cat([image, noise * ratio], dim=1)
        return pooled

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.mode} mode takes {self.in_channels} input channels, got {x.shape[1]}")
        s = default_style_weights(self, x, style_weights)
        y = None
        for k, (ratio, block) in enumerate(zip(self.ratios, self.scales)):
            cur = block(self.scale_input(x, ratio), s)
            if y is not None:
                up = apply_norm(self.join_norms[k - 1], _upsample2(y), s)
                cur = self.joins[k - 1](torch.cat([up, cur], dim=1), s)
            y = cur
        return self.to_rgb(y)

    def steps(self) -> list[Step]:
        """This forward pass as a flat list of layers (models/graph.py), for the engine's runners."""
        g = Steps()
        y = None
        for k, (ratio, block) in enumerate(zip(self.ratios, self.scales)):
            src = 0
            if ratio > 1:
                src = g.add(f"scales.{k}.pool", "pool", partial(self.scale_input, ratio=ratio), 0, self.in_channels,
                            factor=ratio)
            cur = block.add_steps(g, f"scales.{k}", src)
            if y is not None:
                up = g.add(f"join_norms.{k - 1}", "upsample", _upsample2, y, g.steps[y - 1].channels,
                           norm=self.join_norms[k - 1])
                cur = self.joins[k - 1].add_steps(g, f"joins.{k - 1}", (up, cur))
            y = cur
        g.add("to_rgb", "conv", self.to_rgb, y, conv=self.to_rgb)
        return g.steps

    def with_noise(self, image: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Style mode with noise channels: append fresh noise to an image batch."""
        if not self.noise_channels:
            return image
        n, _, h, w = image.shape
        z = self.sample_noise(n, h, w, generator=generator, device=image.device, dtype=image.dtype)
        return torch.cat([image, z], dim=1)
