"""The zoo's gate metric: how much of a style a stylized photo took, and how far it left the photo.

Defined once (issue: zoo v2), independent of the training loss's layer choice and weights:
  gram_ratio = d(stylized, style) / d(photo, style), with d(a, b) = sum over relu1_2, relu2_2, relu3_3, relu4_3
               of mean((G_a - G_b)^2), G = Gram matrix / (C*H*W) of VGG-16 features (caffe or torchvision
               convention, as the weights file says). 1: the photo's style unchanged; 0: the style's statistics.
  content    = ||F(stylized) - F(photo)|| / ||F(photo)|| at relu3_3 (per image, L2 over all elements).
  lattice    = how strongly the generator's stride grid shows: the luminance spectrum's magnitude at the
               frequencies of period LATTICE_PERIOD and its divisors (k/4 cycles per pixel, DC excluded), over the
               median magnitude of the ring around each (the spectrum there without the grid); the largest over
               those frequencies. A photo scores ~5-10; a visible dot grid in flat areas, > 100.
A style passes when its median gram_ratio over the gate photos is <= GATE_RATIO and its median content
distance is <= GATE_CONTENT (a stylization never further from the photo than the style image itself is).
"""
from __future__ import annotations

import torch

from .losses import gram

GRAM_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
CONTENT_LAYER = "relu3_3"
METRIC_LAYERS = GRAM_LAYERS  # relu3_3 is one of them
GATE_RATIO, GATE_CONTENT = 0.30, 3.0
LATTICE_PERIOD = 4  # the Johnson generator's total stride: two stride-2 convs down, two x2 upsamplings up


@torch.no_grad()
def style_grams(vgg, style: torch.Tensor) -> dict[str, torch.Tensor]:
    """1,3,H,W RGB 0..255 style image -> {layer: 1,C,C fp32 Gram}."""
    feats = vgg(style.float())
    return {n: gram(feats[n].float()) for n in GRAM_LAYERS}


def gram_distance(feats: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image (N,) sum over GRAM_LAYERS of the mean squared Gram difference against `target` (1,C,C each)."""
    return sum((gram(feats[n].float()) - target[n]).square().mean(dim=(1, 2)) for n in GRAM_LAYERS)


def content_distance(feats: dict[str, torch.Tensor], photo_feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image (N,) relative L2 distance of the relu3_3 features to the photo's."""
    a, b = feats[CONTENT_LAYER].float().flatten(1), photo_feats[CONTENT_LAYER].float().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def score(vgg, photos: torch.Tensor, stylized: torch.Tensor, target: dict[str, torch.Tensor],
          photo_feats: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per image gram_ratio and content (N,) of `stylized` (N,3,H,W 0..255) against `photos` and the style
    Grams `target` (style_grams). `photo_feats`: the photos' VGG features, when already computed."""
    fx = vgg(photos.float()) if photo_feats is None else photo_feats
    fy = vgg(stylized.float())
    return {"gram_ratio": gram_distance(fy, target) / gram_distance(fx, target).clamp_min(1e-30),
            "content": content_distance(fy, fx)}


def verdict(ratio: torch.Tensor, content: torch.Tensor, grid: torch.Tensor | None = None) -> dict:
    """One style's gate row from its per-photo figures (`grid`: the lattice figures, reported, not gated)."""
    r, c = float(ratio.float().quantile(0.5)), float(content.float().quantile(0.5))  # even counts: the mean of two
    row = {"gram_ratio_median": round(r, 4), "gram_ratio_max": round(float(ratio.max()), 4),
           "content_median": round(c, 4), "content_max": round(float(content.max()), 4)}
    if grid is not None:
        row.update(lattice_median=round(float(grid.float().quantile(0.5)), 2), lattice_max=round(float(grid.max()), 2))
    return {**row, "passed": r <= GATE_RATIO and c <= GATE_CONTENT}


@torch.no_grad()
def lattice(images: torch.Tensor, period: int = LATTICE_PERIOD, ring: int = 4) -> torch.Tensor:
    """Per image (N,) the stride-grid figure of N,3,H,W RGB images (0..255): at each frequency (i/period,
    j/period) cycles per pixel other than DC, the largest spectrum magnitude within one bin of it (a Hann
    window spreads a line over about three bins) over the median magnitude of the surrounding ring of
    half-width `ring` bins; the largest over those frequencies. H and W are cropped to multiples of `period`
    so the grid frequencies fall on exact bins."""
    n, _, h, w = images.shape
    h, w = h - h % period, w - w % period
    rgb = images[..., :h, :w].double()
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    luma = luma - luma.mean(dim=(1, 2), keepdim=True)
    window = torch.hann_window(h, periodic=True, dtype=torch.float64)[:, None] * \
        torch.hann_window(w, periodic=True, dtype=torch.float64)[None, :]
    spectrum = torch.fft.fft2(luma * window).abs()
    offsets = torch.arange(-ring, ring + 1)
    near = (offsets.abs() <= 1)
    ring_mask = ~(near[:, None] & near[None, :])
    best = torch.zeros(n, dtype=torch.float64)
    for i in range(period):
        for j in range(period):
            if i == 0 and j == 0:
                continue
            rows = (i * h // period + offsets) % h
            cols = (j * w // period + offsets) % w
            patch = spectrum[:, rows][:, :, cols]  # N, 2*ring+1, 2*ring+1
            peak = patch[:, near][:, :, near].flatten(1).amax(dim=1)
            floor = patch[:, ring_mask].median(dim=1).values.clamp_min(1e-12)
            best = torch.maximum(best, peak / floor)
    return best.float()
