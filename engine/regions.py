"""Regions: a different style, mix or strength per pixel, in one run of the generator.

A multi-style generator takes a per-pixel style map (N x S x H x W, each pixel's weights summing to 1):
every conditional instance norm applies that pixel's mix of the styles' (gamma, beta), the statistics
staying per channel over the whole image (models/norm.py). So regions have no seams and cost one run.

What the Stylizer takes (`stylizer(x, style_map=..., strength_map=...)`, or `Regions` as a default control):

  style_map     N x S x H x W, or N x (S+1) x H x W whose last channel is `none`: the photo itself. A pixel's
                weights are normalised; the `none` share n makes that pixel's strength 1 - n (the output
                blends with the input per pixel, as `strength` does for the whole image). A single-style model
                takes N x 1 or N x 2 ({style, none}): a strength map, which every backend runs.
  strength_map  N x 1 x H x W in 0..1: a per-pixel strength (times `strength` and the `none` share).

Where a pixel is all `none`, its style weights are irrelevant to what is shown (the photo is) but they
still feed the layers' global statistics and the neighbours' receptive fields: they are set to the
sample's mean mix over its styled pixels, so a `none` hole looks to the network like its surroundings.

`Regions` is the same at any size: a label image (H x W of indices into `mixes`), what each label means
(a {style: weight} mix, `none` allowed as a key), an optional strength image, and `feather` (pixels: a
Gaussian blur of the labels' one-hot maps, sigma = feather / 2, cut at `feather` pixels, so a pixel
further than that from an edge keeps its region's weights exactly). `maps(...)` resizes the labels to
the image (nearest, then feather) and the strength image (bilinear), and builds the two maps.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instyle.models.styles import StyleError, mix_weights

NONE = "none"


def region_vector(names: Sequence[str], mix: Mapping[str | int, float] | str | None) -> torch.Tensor:
    """A length S+1 vector (sums to 1; the last entry is `none`) for one region's mix. None or "none": the photo."""
    if mix is None or mix == NONE:
        mix = {NONE: 1.0}
    elif isinstance(mix, (str, int)):
        mix = {mix: 1.0}
    none = float(sum(w for k, w in mix.items() if k == NONE))
    styled = {k: w for k, w in mix.items() if k != NONE}
    total = none + sum(float(w) for w in styled.values())
    if none < 0 or not total > 0:
        raise StyleError(f"a region's weights must be >= 0 with a positive sum, got {dict(mix)}")
    v = torch.zeros(len(names) + 1)
    if styled:
        share = sum(float(w) for w in styled.values())
        if share > 0:
            v[:-1] = mix_weights(names, styled) * (share / total)
        else:
            mix_weights(names, {k: 1.0 for k in styled})  # still checks the names
    v[-1] = none / total
    return v


def gaussian_feather(onehot: torch.Tensor, px: float) -> torch.Tensor:
    """Blur N x L x H x W one-hot maps with a Gaussian of sigma px / 2 cut at radius ceil(px) (edges replicated).
    Values within 1e-6 of 0 or 1 are snapped, so pixels further than px from an edge stay exactly one-hot."""
    r = int(-(-px // 1))
    if r < 1:
        return onehot
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=onehot.device)
    k = torch.exp(-0.5 * (t / (px / 2)) ** 2)
    k = k / k.sum()
    n, c, h, w = onehot.shape
    y = onehot.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    y = y.reshape(n, c, h, w)
    y = torch.where(y < 1e-6, torch.zeros_like(y), torch.where(y > 1 - 1e-6, torch.ones_like(y), y))
    return y / y.sum(1, keepdim=True)


@dataclass
class Regions:
    """Per-pixel controls independent of the image size (see the module docstring)."""

    labels: torch.Tensor | None = None            # H x W integer indices into `mixes`
    mixes: tuple = ()                             # per label: {name or index: weight} ("none" a key), a name, or None
    strength: torch.Tensor | None = None          # H x W float 0..1
    feather: float = 0.0                          # pixels, at the image's resolution
    notify: Callable[[str], None] | None = None   # told (once per size) when a map is resized to an image
    source: str = "mask"                          # how notes name the label image (e.g. its file)
    strength_source: str = "strength map"

    def __post_init__(self):
        self._noted: set = set()
        self._last: tuple | None = None  # (key, maps) of the last size: batches and video frames repeat it
        if self.labels is not None and (self.labels.dim() != 2 or int(self.labels.max()) >= len(self.mixes)):
            raise ValueError("Regions: labels must be H x W indices into mixes")
        if self.strength is not None and self.strength.dim() != 2:
            raise ValueError("Regions: strength must be H x W")
        if self.feather < 0:
            raise ValueError(f"feather must be >= 0 pixels, got {self.feather}")

    def vectors(self, names: Sequence[str]) -> torch.Tensor:
        """L x (S+1): each label's mix for a model with these style names (StyleError for an unknown style)."""
        return torch.stack([region_vector(names, m) for m in self.mixes]) if self.mixes else torch.zeros(0)

    def _note(self, what: str, size: tuple[int, int], to: tuple[int, int]) -> None:
        key = (what, size, to)
        if self.notify is not None and size != to and key not in self._noted:
            self._noted.add(key)
            self.notify(f"{what} is {size[1]}x{size[0]}, resized to the image's {to[1]}x{to[0]}")

    def maps(self, names: Sequence[str], n: int, h: int, w: int, device) -> tuple[torch.Tensor | None,
                                                                                  torch.Tensor | None]:
        """(style map N x (S+1) x h x w or None, strength map N x 1 x h x w or None) for an image of h x w."""
        key = (tuple(names), n, h, w, str(device))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        style_map = strength = None
        if self.labels is not None:
            self._note(self.source, tuple(self.labels.shape), (h, w))
            lab = self.labels.to(device)[None, None].float()
            if tuple(lab.shape[-2:]) != (h, w):
                lab = F.interpolate(lab, size=(h, w), mode="nearest-exact")
            onehot = F.one_hot(lab[0, 0].long(), len(self.mixes)).permute(2, 0, 1)[None].float()
            onehot = gaussian_feather(onehot, self.feather)
            style_map = torch.einsum("nlhw,ls->nshw", onehot, self.vectors(names).to(device))
            style_map = style_map.expand(n, -1, -1, -1)
        if self.strength is not None:
            self._note(self.strength_source, tuple(self.strength.shape), (h, w))
            s = self.strength.to(device, torch.float32)[None, None]
            if tuple(s.shape[-2:]) != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=h < s.shape[-2] or w < s.shape[-1]).clamp_(0, 1)
            strength = s.expand(n, -1, -1, -1)
        self._last = (key, (style_map, strength))
        return style_map, strength


def split(style_map: torch.Tensor | None, strength_map: torch.Tensor | None, styles: int,
          shape: tuple[int, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check the maps against an input of `shape` (N,3,H,W) and a model of `styles` styles; return (the style
    part, N x S x H x W normalised per pixel, `none` pixels filled with the sample's mean mix; None for a
    single-style model) and (the per-pixel strength N x 1 x H x W, or None where it is 1 everywhere)."""
    n, _, h, w = shape
    pixel = None
    if strength_map is not None:
        strength_map = strength_map.float()
        if tuple(strength_map.shape) not in ((n, 1, h, w), (1, 1, h, w)):
            raise ValueError(f"strength_map must be N x 1 x H x W = {(n, 1, h, w)}, got {tuple(strength_map.shape)}")
        if not torch.isfinite(strength_map).all() or strength_map.min() < 0 or strength_map.max() > 1:
            raise ValueError("strength_map values must be in 0..1")
        pixel = strength_map.expand(n, -1, -1, -1)
    if style_map is None:
        return None, pixel
    m = style_map.float()
    if m.dim() != 4 or m.shape[0] not in (1, n) or m.shape[1] not in (styles, styles + 1) or m.shape[2:] != (h, w):
        raise ValueError(f"style_map must be N x S x H x W or N x (S+1) x H x W (the last channel: none) with "
                         f"N={n}, S={styles}, H x W={h}x{w}; got {tuple(m.shape)}")
    total = m.sum(1, keepdim=True)
    if not torch.isfinite(m).all() or (m < 0).any() or not (total > 0).all():
        raise ValueError("style_map weights must be finite, >= 0, with a positive sum at every pixel")
    m = (m / total).expand(n, -1, -1, -1)
    part = m[:, :styles]
    if m.shape[1] == styles + 1:
        keep = 1 - m[:, styles:]
        pixel = keep if pixel is None else pixel * keep
        share = part.sum(1, keepdim=True)
        # mean mix of the styled pixels (the first style where a sample has none)
        mean = part.sum((2, 3), keepdim=True)
        first = torch.zeros_like(mean)
        first[:, 0] = 1
        mean = torch.where(mean.sum(1, keepdim=True) > 0, mean / mean.sum(1, keepdim=True).clamp_min(1e-30), first)
        part = torch.where(share > 0, part / share.clamp_min(1e-30), mean.expand_as(part))
    if pixel is not None and bool((pixel == 1).all()):
        pixel = None
    return (part if styles > 1 else None), pixel


def is_constant(style_map: torch.Tensor) -> bool:
    """Whether every sample's map is one mix at all pixels (then N x S weights say the same)."""
    flat = style_map.flatten(2)
    return bool(((flat.amax(2) - flat.amin(2)) <= 1e-7).all())
