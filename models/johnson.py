"""Johnson et al.'s residual generator with Ulyanov et al.'s instance norm.

Module names follow pytorch/examples fast_neural_style's TransformerNet (conv1/in1 ... res1-res5 ...
deconv1-3, `conv2d` inside each conv layer), so its checkpoints load unchanged. Input and output are
RGB in 0..255; the output is not clamped here (training needs the gradient), callers clamp.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .graph import Step, Steps
from .norm import apply_norm, default_style_weights, make_norm, make_pad

UPSAMPLINGS = ("nearest", "transposed")


class ConvLayer(nn.Module):
    """Pad then convolve, so the output keeps ceil(size / stride)."""

    kind = "conv"  # models/graph.py

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: str = "reflect"):
        super().__init__()
        self.pad = make_pad(padding, kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest x2 then pad and convolve: upsampling without the checkerboard of transposed convs."""

    kind = "upconv"

    def __init__(self, cin: int, cout: int, kernel: int, padding: str = "reflect"):
        super().__init__()
        self.pad = make_pad(padding, kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.pad(F.interpolate(x, scale_factor=2, mode="nearest")))


class TransposedConvLayer(nn.Module):
    """Stride-2 transposed conv (texture_nets' johnson model): exactly doubles the size."""

    kind = "tconv"

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv2d = nn.ConvTranspose2d(cin, cout, kernel, 2, padding=kernel // 2, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x)


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the identity (He et al.; no ReLU after the sum)."""

    def __init__(self, channels: int, norm: str = "instance", padding: str = "reflect", styles: int = 1):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1, padding)
        self.in1 = make_norm(norm, channels, styles)
        self.conv2 = ConvLayer(channels, channels, 3, 1, padding)
        self.in2 = make_norm(norm, channels, styles)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        out = self.relu(apply_norm(self.in1, self.conv1(x), style_weights))
        return apply_norm(self.in2, self.conv2(out), style_weights) + x


class JohnsonNet(nn.Module):
    """The residual style-transfer generator: 9x9 conv, two stride-2 convs, residual blocks, two x2
    upsamplings, 9x9 conv. Defaults reproduce pytorch/examples' TransformerNet (~1.68 M parameters).
    `styles` > 1: conditional instance norm (one gamma/beta pair per style, models/norm.py)."""

    arch = "johnson"

    def __init__(
        self,
        width: int = 32,
        blocks: int = 5,
        norm: str = "instance",
        padding: str = "reflect",
        upsampling: str = "nearest",
        styles: int = 1,
    ):
        super().__init__()
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
        if width < 1 or blocks < 0 or styles < 1:
            raise ValueError(f"width and styles must be >= 1 and blocks >= 0, got {width}, {styles}, {blocks}")
        self.config = dict(width=width, blocks=blocks, norm=norm, padding=padding, upsampling=upsampling)
        if styles > 1:  # single-style configs stay as they always were
            self.config["styles"] = styles
        self.styles = styles
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv1 = ConvLayer(3, w1, 9, 1, padding)
        self.in1 = make_norm(norm, w1, styles)
        self.conv2 = ConvLayer(w1, w2, 3, 2, padding)
        self.in2 = make_norm(norm, w2, styles)
        self.conv3 = ConvLayer(w2, w3, 3, 2, padding)
        self.in3 = make_norm(norm, w3, styles)
        self.res_names = [f"res{i + 1}" for i in range(blocks)]
        for name in self.res_names:
            setattr(self, name, ResidualBlock(w3, norm, padding, styles))
        if upsampling == "nearest":
            self.deconv1 = UpsampleConvLayer(w3, w2, 3, padding)
            self.deconv2 = UpsampleConvLayer(w2, w1, 3, padding)
        else:
            self.deconv1 = TransposedConvLayer(w3, w2, 3)
            self.deconv2 = TransposedConvLayer(w2, w1, 3)
        self.in4 = make_norm(norm, w2, styles)
        self.in5 = make_norm(norm, w1, styles)
        self.deconv3 = ConvLayer(w1, 3, 9, 1, padding)
        self.relu = nn.ReLU()

    # Two stride-2 convs: sizes that are multiples of 4 come back unchanged. Reflection padding of the
    # 3x3 convs at 1/4 scale needs at least 2 pixels there.
    stride_multiple = 4
    min_size = 8
    in_channels = 3

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """x: N,3,H,W RGB 0..255; style_weights: N x styles mixing weights (None: the first style)."""
        s = default_style_weights(self, x, style_weights)
        y = self.relu(apply_norm(self.in1, self.conv1(x), s))
        y = self.relu(apply_norm(self.in2, self.conv2(y), s))
        y = self.relu(apply_norm(self.in3, self.conv3(y), s))
        for name in self.res_names:
            y = getattr(self, name)(y, s)
        y = self.relu(apply_norm(self.in4, self.deconv1(y), s))
        y = self.relu(apply_norm(self.in5, self.deconv2(y), s))
        return self.deconv3(y)


    def steps(self) -> list[Step]:
        """This forward pass as a flat list of layers (models/graph.py), for the engine's runners."""
        g = Steps()

        def add(name, layer, src, norm, relu, residual=None):
            return g.add(name, layer.kind, layer, src, conv=layer.conv2d, norm=norm, relu=relu, residual=residual)

        y = add("conv1", self.conv1, 0, self.in1, True)
        y = add("conv2", self.conv2, y, self.in2, True)
        y = add("conv3", self.conv3, y, self.in3, True)
        for name in self.res_names:
            block = getattr(self, name)
            h = add(f"{name}.conv1", block.conv1, y, block.in1, True)
            y = add(f"{name}.conv2", block.conv2, h, block.in2, False, residual=y)
        y = add("deconv1", self.deconv1, y, self.in4, True)
        y = add("deconv2", self.deconv2, y, self.in5, True)
        add("deconv3", self.deconv3, y, None, False)
        return g.steps
