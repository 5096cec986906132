"""Normalization and padding choices shared by both generators.

The paper's point is the norm: instance norm (per image, per channel statistics, kept at test time)
instead of batch norm. `none` exists for ablations. Padding `reflect` avoids the dark borders that zero
padding leaves on stylized images (texture_nets' option of the same name).

Conditional instance norm (Dumoulin, Shlens, Kudlur 2017) holds one (gamma, beta) pair per style:
weight and bias of shape [S, C]. A forward pass takes per-sample style weights (N x S, rows summing to
1); a sample's (gamma, beta) is that convex mix of the styles' pairs. A one-hot row is one style. A
generator with S = 1 uses the plain nn.InstanceNorm2d, so single-style checkpoints keep their layout.

Regions: the weights may also be a per-pixel style map, N x S x H x W at the generator's input resolution
(each pixel's S weights sum to 1). Every conditional layer then resizes the map to its own H x W
(`resize_style_map`) and applies (gamma, beta) per pixel, sum_s m_s(p) (gamma_s, beta_s); the statistics
stay per channel over the whole image, so one run styles every region with no seams.
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

    def affine_map(self, style_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel (gamma, beta), each N x C x h x w in fp32, from a style map N x S x h x w (already at
        the layer's resolution)."""
        m = style_map.float()
        return (torch.einsum("nshw,sc->nchw", m, self.weight.float()),
                torch.einsum("nshw,sc->nchw", m, self.bias.float()))

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        y = F.instance_norm(x, eps=self.eps)  # statistics per (sample, channel) over the whole image
        if style_weights.dim() == 4:  # a per-pixel style map
            gamma, beta = self.affine_map(resize_style_map(style_weights, tuple(x.shape[-2:])))
            return y * gamma.to(y.dtype) + beta.to(y.dtype)
        gamma, beta = self.affine(style_weights)
        return y * gamma[:, :, None, None].to(y.dtype) + beta[:, :, None, None].to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, styles={self.styles}, eps={self.eps}"


def resize_style_map(style_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A style map (N x S x H x W) at a layer's resolution `size`.

    Shrinking (the generators' layers run at 1, 1/2 and 1/4 of the input, the pyramid's down to 1/32) uses
    area averaging: each coarse pixel gets the mean of the fine pixels it covers, so the weights stay a
    convex mix, a region keeps its share of every layer, and thin regions do not alias away. With the
    integer factors of padded inputs it is exactly avg_pool2d, a block-local operation: the rows of a
    tile's band are the same whether the whole map or the band is resized (what exact tiling relies on).
    Growing (no shipped layer does) uses bilinear interpolation, which also keeps each pixel's mix convex;
    nearest would put steps into (gamma, beta) that the layer then paints as seams.
    """
    h, w = style_map.shape[-2:]
    if (h, w) == tuple(size):
        return style_map
    if h % size[0] == 0 and w % size[1] == 0:  # integer factors: a plain (and exportable) average pool
        return F.avg_pool2d(style_map, (h // size[0], w // size[1]))
    if size[0] <= h and size[1] <= w:
        return F.interpolate(style_map, size=size, mode="area")
    return F.interpolate(style_map, size=size, mode="bilinear", align_corners=False)


def is_style_map(style_weights: torch.Tensor | None) -> bool:
    return style_weights is not None and style_weights.dim() == 4


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
    """None for single-style models; else style_weights (checked: N x S, or a per-pixel style map
    N x S x H x W at x's resolution) or one-hot rows of the first style."""
    styles = getattr(model, "styles", 1)
    if styles == 1:
        if style_weights is not None and style_weights.shape[1 if style_weights.dim() == 4 else -1] != 1:
            raise ValueError(f"a single-style generator takes no style weights, got {tuple(style_weights.shape)}")
        return None
    if style_weights is None:
        style_weights = x.new_zeros(x.shape[0], styles, dtype=torch.float32)
        style_weights[:, 0] = 1
    if style_weights.dim() == 4:
        want = (x.shape[0], styles, *x.shape[-2:])
        if tuple(style_weights.shape) != want:
            raise ValueError(f"a style map must be N x {styles} x H x W = {want} (the input's size), "
                             f"got {tuple(style_weights.shape)}")
        return style_weights
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
