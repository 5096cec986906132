"""Normalization and padding choices shared by both generators.

The paper's point is the norm: instance norm (per image, per channel statistics, kept at test time)
instead of batch norm. `none` exists for ablations. Padding `reflect` avoids the dark borders that zero
padding leaves on stylized images (texture_nets' option of the same name).
"""
from __future__ import annotations

from torch import nn

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "zero")


def make_norm(kind: str, channels: int) -> nn.Module:
    """An affine norm layer of `kind` over `channels` channels."""
    if kind == "instance":
        # affine, no running stats: the statistics of the image itself are used at train and test time
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def make_pad(kind: str, amount: int) -> nn.Module:
    """Spatial padding of `amount` pixels on every side."""
    if kind == "reflect":
        return nn.ReflectionPad2d(amount)
    if kind == "zero":
        return nn.ZeroPad2d(amount)
    raise ValueError(f"padding must be one of {PADDINGS}, got {kind!r}")
