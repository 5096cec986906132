"""Normalization and padding choices shared by both generators.

The paper's point is the norm: instance norm (per image, per channel statistics, kept at test time)
instead of batch norm. `none` exists for ablations. Padding `reflect` avoids the dark borders that zero
padding leaves on stylized images (texture_nets' option of the same name).

Conditional instance norm (Dumoulin, Shlens, Kudlur 2017) holds one (gamma, beta) pair per style:
weight and bias of shape [S, C]. A forward pass takes per-sample style weights (N x S, rows summing to
1); a sample's (gamma, beta) is that convex mix of the styles' pairs. A one-hot row is one style. A
generator with S = 1 uses the plain nn.InstanceNorm2d, so single-style checkpoints keep their layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "zero")


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm with one affine pair per style; forward(x, style_weights N x S)."""

    conditional = True  # apply_norm passes style weights to modules that say so (fused stand-ins too)

    def __init__(self, channels: int, styles: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.styles, self.eps = channels, styles, eps
        self.weight = nn.Parameter(torch.ones(styles, channels))
        self.bias = nn.Parameter(torch.zeros(styles, channels))

    def affine(self, style_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (gamma, beta), each N x C in fp32: the mix of the styles' pairs."""
        w = style_weights.float()
        return w @ self.weight.float(), w @ self.bias.float()

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style_weights)
        y = F.instance_norm(x, eps=self.eps)
        return y * gamma[:, :, None, None].to(y.dtype) + beta[:, :, None, None].to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, styles={self.styles}, eps={self.eps}"


def is_instance_norm(module: nn.Module) -> bool:
    """An instance norm the engine and kernels handle: affine IN without running stats, or conditional IN."""
    if isinstance(module, ConditionalInstanceNorm2d):
        return True
    return isinstance(module, nn.InstanceNorm2d) and module.affine and not module.track_running_stats


def apply_norm(norm: nn.Module, x: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
    """`norm(x)`, passing the style weights to conditional norms."""
    if getattr(norm, "conditional", False):
        if style_weights is None:
            raise ValueError(f"a {norm.styles}-style generator needs style weights (N x {norm.styles})")
        return norm(x, style_weights)
    return norm(x)


def default_style_weights(model: nn.Module, x: torch.Tensor, style_weights: torch.Tensor | None):
    """None for single-style models; else style_weights (checked) or one-hot rows of the first style."""
    styles = getattr(model, "styles", 1)
    if styles == 1:
        if style_weights is not None and style_weights.shape[-1] != 1:
            raise ValueError(f"a single-style generator takes no style weights, got {tuple(style_weights.shape)}")
        return None
    if style_weights is None:
        style_weights = x.new_zeros(x.shape[0], styles, dtype=torch.float32)
        style_weights[:, 0] = 1
    if style_weights.shape != (x.shape[0], styles):
        raise ValueError(f"style weights must be N x {styles} = {(x.shape[0], styles)}, "
                         f"got {tuple(style_weights.shape)}")
    return style_weights


def make_norm(kind: str, channels: int, styles: int = 1) -> nn.Module:
    """An affine norm layer of `kind` over `channels` channels (`styles` > 1: conditional instance norm)."""
    if styles > 1 and kind != "instance":
        raise ValueError(f"several styles in one network need norm 'instance', got {kind!r}")
    if kind == "instance":
        if styles > 1:
            return ConditionalInstanceNorm2d(channels, styles)
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
