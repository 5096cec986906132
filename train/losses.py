"""Perceptual losses (Gatys et al.; Johnson et al.; Ulyanov et al.): content, style (Gram), total variation.

All loss arithmetic is fp32 even when the VGG forward runs under autocast: features are upcast before
the Gram products and differences (autocast disabled there), so bf16/fp16 training only changes the
network passes, not the loss values' precision.

Magnitudes: a Gram matrix is normalised by C*H*W (size-independent); the content loss is the mean
squared feature difference; each style layer's loss is the mean squared Gram difference. With the
caffe-convention VGG (inputs 0..255) features are ~60x larger than with torchvision's (inputs ~N(0,1)),
so content losses are ~60^2 and style losses ~60^4 larger: weights tuned for one file do not transfer.
The defaults below are tuned for the shared caffe-convention file; `default_weights` scales them for
torchvision-convention files.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .vgg import VGGFeatures

DEFAULT_CONTENT_LAYERS = ("relu2_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
# Defaults for the caffe-convention VGG-16 (shared vgg16-features.safetensors), default layers. Measured at
# the start of training (fresh Johnson generator = mid-gray output, chicago 256 px, style longer side 512):
# unweighted content 2.2e5; unweighted style 2.0e5 (udnie), 1.4e6 (candy), 1.5e6 (starry_night), 4.0e6
# (mosaic). Style 0.3 puts the weighted style term at 0.3-5x the content term (geometric mean ~1.6x).
# Gatys check (chicago x starry_night, 128 px, 60 L-BFGS steps): style 0.1 barely stylises, 0.3 clearly,
# 1 strongly, 10 swamps the content. TV 10 is ~0.1% of the total: it only damps pixel noise.
CAFFE_WEIGHTS = {"content": 1.0, "style": 0.3, "tv": 10.0, "lattice": 0.0}
# torchvision input is ~1/57.6 of caffe's scale (x/255/std): content terms shrink by ~57.6^2, style by ~57.6^4.
# Derived, not measured (no torchvision file here); pass --content-weight/--style-weight to override.
_TV_SCALE = (255 * 0.226) ** 2
TORCHVISION_WEIGHTS = {"content": CAFFE_WEIGHTS["content"] * _TV_SCALE,
                       "style": CAFFE_WEIGHTS["style"] * _TV_SCALE**2, "tv": CAFFE_WEIGHTS["tv"], "lattice": 0.0}


# With the per-style balance (`style_balance="gram"`) a style's loss is its squared Gram error relative to its
# own Grams' magnitude, the same units for every style and either VGG convention; the one global weight, in
# content-loss units, and the stride-lattice weight (pixel^2 units) were chosen by fine-tuning the shipped zoo
# at 1e6, 3e6 and 1e7 and scoring each with the gate (bench/zoo_sweep.py; bench/results/*-zoo-sweep/).
BALANCED_STYLE_WEIGHT = {"caffe": 3e6, "torchvision": 3e6 / _TV_SCALE}
BALANCED_LATTICE_WEIGHT = {"caffe": 1e3, "torchvision": 1e3 / _TV_SCALE}


def default_weights(convention: str, balance: str = "off") -> dict[str, float]:
    weights = dict(CAFFE_WEIGHTS if convention == "caffe" else TORCHVISION_WEIGHTS)
    if balance == "gram":
        weights["style"] = BALANCED_STYLE_WEIGHT[convention]
        weights["lattice"] = BALANCED_LATTICE_WEIGHT[convention]
    return weights


def gram(f: torch.Tensor) -> torch.Tensor:
    """N,C,H,W features -> N,C,C Gram matrices / (C*H*W), in fp32 whatever the input dtype."""
    n, c, h, w = f.shape
    with torch.autocast(f.device.type, enabled=False):
        f = f.float().reshape(n, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic L1 TV), fp32, pixel units."""
    y = y.float()
    return (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., :, 1:] - y[..., :, :-1]).abs().mean()


def _phase_means(x: torch.Tensor, period: int, window: int) -> torch.Tensor:
    """Per window x window tile of N,C,H,W `x`: the mean of each of its period x period pixel phases minus the
    tile's mean (fp32; N, C, tiles down, period, tiles across, period)."""
    n, c, h, w = x.shape
    th, tw, k = h // window, w // window, window // period
    tiles = x[..., :th * window, :tw * window].float().reshape(n, c, th, k, period, tw, k, period)
    phase = tiles.mean(dim=(3, 6))
    return phase - phase.mean(dim=(3, 5), keepdim=True)


def stride_lattice(y: torch.Tensor, content: torch.Tensor | None = None, period: int = 4,
                   window: int = 32) -> torch.Tensor:
    """The stride grid's energy in generated images `y` (fp32, pixel^2): in each window x window tile, the
    mean of each of the period x period pixel phases minus the tile's mean, less the same of `content` (the
    photo the generator was given, None: zeros), squared and averaged.

    A generator of total stride `period` computes every pixel phase with other weights, so it can paint a
    dot grid locked to the pixel lattice (visible at 1:1 in flat areas; train/style_metric.py: lattice
    measures it in the spectrum). Elsewhere the phase means of a tile nearly average out, and what the
    photo itself has at those phases is subtracted. Unlike TV, which damps every fine detail, this term
    only sees what is locked to the grid."""
    h, w = y.shape[-2:]
    window = min(window, h - h % period, w - w % period)
    assert window >= period and window % period == 0, f"window {window} vs period {period} for {h}x{w}"
    grid = _phase_means(y, period, window)
    if content is not None:
        grid = grid - _phase_means(content, period, window)
    return grid.square().mean()


def parse_layers(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s.strip()]


@dataclass
class LossSpec:
    content_layers: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENT_LAYERS))
    style_layers: list[str] = field(default_factory=lambda: list(DEFAULT_STYLE_LAYERS))
    style_layer_weights: list[float] | None = None  # None: equal (1 each)
    content_weight: float = CAFFE_WEIGHTS["content"]
    style_weight: float = CAFFE_WEIGHTS["style"]
    tv_weight: float = CAFFE_WEIGHTS["tv"]
    # "gram": each style's loss divided by its target Grams' magnitude (sum over style layers of the layer
    # weight times mean(G^2)), so styles of very different Gram scale train to comparable ratios; "off": raw
    style_balance: str = "off"
    style_multipliers: list[float] | None = None  # per style, times style_weight (None: 1 each)
    lattice_weight: float = 0.0  # stride_lattice's weight (pixel^2 units, like content's scale after weighting)
    distill_weight: float = 0.0  # mean squared pixel difference to a teacher generator's output (set_teacher)

    def layers(self) -> list[str]:
        return list(dict.fromkeys([*self.content_layers, *self.style_layers]))

    def as_dict(self) -> dict:
        return dict(content_layers=self.content_layers, style_layers=self.style_layers,
                    style_layer_weights=self.layer_weights(), content_weight=self.content_weight,
                    style_weight=self.style_weight, tv_weight=self.tv_weight, style_balance=self.style_balance,
                    style_multipliers=self.style_multipliers, lattice_weight=self.lattice_weight,
                    distill_weight=self.distill_weight)

    def layer_weights(self) -> list[float]:
        w = self.style_layer_weights or [1.0] * len(self.style_layers)
        if len(w) != len(self.style_layers):
            raise ValueError(f"{len(w)} style layer weights for {len(self.style_layers)} style layers")
        return [float(x) for x in w]


class PerceptualLoss(nn.Module):
    """Weighted content + style + TV loss against one or several style images whose Grams are computed once.

    With several styles (a conditional-IN generator), each sample of a batch is scored against its own
    style's Grams (`style_index`)."""

    def __init__(self, vgg: VGGFeatures, spec: LossSpec):
        super().__init__()
        missing = [n for n in spec.layers() if n not in vgg.layers]
        assert not missing, f"VGG was built without layers {missing}"
        if spec.style_balance not in ("off", "gram"):
            raise ValueError(f"style_balance must be off or gram, got {spec.style_balance!r}")
        self.vgg, self.spec = vgg, spec
        self.style_layer_weights = spec.layer_weights()

    @torch.no_grad()
    def set_style(self, style: torch.Tensor) -> None:
        """`style`: 1,3,H,W RGB 0..255. Its Gram matrices (fp32, 1,C,C) become the targets."""
        self.set_styles([style])

    @torch.no_grad()
    def set_styles(self, styles: Sequence[torch.Tensor]) -> None:
        """One 1,3,H,W RGB 0..255 image per style (sizes may differ). Their Grams (fp32, S,C,C) become the
        targets; style s is scored against row s."""
        grams = {n: [] for n in self.spec.style_layers}
        for style in styles:
            feats = self.vgg(style.float())
            for n in self.spec.style_layers:
                grams[n].append(gram(feats[n]))
        for n in self.spec.style_layers:  # buffers: .to(device) moves them with the module
            self.register_buffer(f"target_{n}", torch.cat(grams[n]), persistent=False)
        self.num_styles = len(styles)
        mult = self.spec.style_multipliers or [1.0] * len(styles)
        if len(mult) != len(styles):
            raise ValueError(f"{len(mult)} style weight multipliers for {len(styles)} styles")
        scale = torch.tensor(mult, dtype=torch.float32, device=styles[0].device)
        if self.spec.style_balance == "gram":
            scale = scale / self.gram_magnitudes()
        self.register_buffer("style_scale", scale, persistent=False)

    def set_teacher(self, teacher: nn.Module, rows: Sequence[int] | None = None) -> None:
        """Distillation: a trained generator whose output the `distill` term pulls the student's towards, style
        s of the student being the teacher's row `rows[s]` (None: the same row). Frozen; moves with .to()."""
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        styles = getattr(teacher, "styles", 1)
        rows = list(range(styles)) if rows is None else list(rows)
        self.register_buffer("teacher_rows", torch.tensor(rows, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def teacher_output(self, content: torch.Tensor, style_index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's stylization of `content` in each sample's style (fp32, unclamped like the student's)."""
        styles = getattr(self.teacher, "styles", 1)
        if styles == 1:
            return self.teacher(content.float())
        index = torch.zeros(content.shape[0], dtype=torch.long, device=content.device) if style_index is None \
            else style_index
        weights = F.one_hot(self.teacher_rows[index], styles).float()
        return self.teacher(content.float(), weights)

    def gram_magnitudes(self) -> torch.Tensor:
        """Per style (S,): sum over style layers of layer weight * mean(target Gram^2), in loss units."""
        return sum(w * t.square().mean(dim=(1, 2)) for w, t in zip(self.style_layer_weights, self.targets.values()))

    @property
    def targets(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, f"target_{n}") for n in self.spec.style_layers}

    def forward(self, y: torch.Tensor, content: torch.Tensor | None = None,
                style_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms of generated images `y` (N,3,H,W, 0..255) against `content` (None: texture mode) and
        the styles `style_index` (N longs; None: every sample against style 0).

        Returns fp32 scalars: content, style, tv, lattice and distill when weighted (each already weighted) and
        total; and
        `style_per_sample` (N, weighted; its mean is `style`).
        """
        spec = self.spec
        zero = y.new_zeros((), dtype=torch.float32)
        needs_vgg = (content is not None and spec.content_weight) or spec.style_weight
        feats = self.vgg(y.float()) if needs_vgg else {}  # normalisation in fp32; convs in the autocast dtype
        c_loss = zero
        if content is not None and spec.content_weight:
            assert content.shape[-2:] == y.shape[-2:], f"content {tuple(content.shape)} vs output {tuple(y.shape)}"
            with torch.no_grad():
                target = self.vgg(content)
            with torch.autocast(y.device.type, enabled=False):
                c_loss = sum(F.mse_loss(feats[n].float(), target[n].float()) for n in spec.content_layers)
            c_loss = spec.content_weight * c_loss
        per_sample = y.new_zeros(y.shape[0], dtype=torch.float32)
        if spec.style_weight:
            with torch.autocast(y.device.type, enabled=False):
                for n, w in zip(spec.style_layers, self.style_layer_weights):
                    g = gram(feats[n])
                    target = getattr(self, f"target_{n}")
                    target = target[:1].expand_as(g) if style_index is None else target[style_index]
                    per_sample = per_sample + w * (g - target).square().mean(dim=(1, 2))
            scale = self.style_scale[:1] if style_index is None else self.style_scale[style_index]
            per_sample = spec.style_weight * scale * per_sample
        s_loss = per_sample.mean()
        tv = spec.tv_weight * total_variation(y) if spec.tv_weight else zero
        terms = {"content": c_loss, "style": s_loss, "tv": tv}
        if spec.lattice_weight:
            terms["lattice"] = spec.lattice_weight * stride_lattice(y, content)
        if spec.distill_weight:
            assert content is not None and hasattr(self, "teacher"), "distillation needs content and set_teacher()"
            with torch.autocast(y.device.type, enabled=False):
                teacher = self.teacher_output(content, style_index)
                terms["distill"] = spec.distill_weight * F.mse_loss(y.float(), teacher)
        return {**terms, "total": sum(terms.values()), "style_per_sample": per_sample}
