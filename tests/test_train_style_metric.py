"""The zoo's gate metric (train/style_metric.py) against the same quantities computed independently: the
functional VGG-16 of test_train_cli and float64 numpy Grams, on real photos and a real style at odd sizes."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from conftest import need
from test_train_cli import functional_vgg16
from test_train_core import one_thread  # noqa: F401  (autouse fixture)

from instyle.train import style_metric as M
from instyle.train.common import load_image
from instyle.train.vgg import load_vgg

LAYERS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]


def numpy_gram(f):
    n, c, h, w = f.shape
    a = f.double().numpy().reshape(n, c, h * w)
    return a @ a.transpose(0, 2, 1) / (c * h * w)


def reference(state, photos, stylized, style):
    fx, fy, fs = (functional_vgg16(t, state, LAYERS) for t in (photos, stylized, style))

    def d(fa):
        return sum(((numpy_gram(fa[n]) - numpy_gram(fs[n])) ** 2).mean(axis=(1, 2)) for n in LAYERS)

    a, b = (f["relu3_3"].double().numpy().reshape(photos.shape[0], -1) for f in (fy, fx))
    return d(fy) / d(fx), np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_gate_metric_matches_independent_computation(data):
    from safetensors.torch import load_file

    path = need(data / "vgg" / "vgg16-features.safetensors")
    vgg = load_vgg(M.METRIC_LAYERS, path)
    demo = sorted((data / "content" / "demo").glob("*.jpg"))[:2]
    photos = torch.cat([F.interpolate(load_image(p), size=(53, 67), mode="bilinear", antialias=True)
                        for p in demo])
    style = load_image(data / "styles" / "candy.jpg", 71)
    # a "stylization": the photos pulled towards the style image's colours, plus structured noise
    g = torch.Generator().manual_seed(0)
    tint = style.mean(dim=(2, 3), keepdim=True)
    stylized = (0.5 * photos + 0.5 * tint + 20 * torch.randn(photos.shape, generator=g)).clamp(0, 255)
    got = M.score(vgg, photos, stylized, M.style_grams(vgg, style))
    ratio, content = reference(load_file(str(path)), photos, stylized, style)
    np.testing.assert_allclose(got["gram_ratio"].numpy(), ratio, rtol=2e-3)
    np.testing.assert_allclose(got["content"].numpy(), content, rtol=2e-3)
    assert 0 < ratio.min() and content.min() > 0
    # the photo itself: ratio 1, content 0; the verdict applies both thresholds
    same = M.score(vgg, photos, photos, M.style_grams(vgg, style))
    torch.testing.assert_close(same["gram_ratio"], torch.ones(2), rtol=1e-5, atol=0)
    assert float(same["content"].abs().max()) < 1e-5
    row = M.verdict(same["gram_ratio"], same["content"])
    assert row["gram_ratio_median"] == 1.0 and row["passed"] is False
    assert M.verdict(torch.tensor([0.2, 0.25, 0.5]), torch.tensor([1.0, 2.0, 9.0]))["passed"] is True
    assert M.verdict(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([1.0, 3.5, 9.0]))["passed"] is False


def _grid(h, w, amplitude, period=4):
    """A dot grid locked to the pixel lattice: +amplitude at one phase, -amplitude at another."""
    cell = torch.zeros(period, period)
    cell[0, 0], cell[period // 2, period // 2] = amplitude, -amplitude
    return cell.repeat(h // period + 1, w // period + 1)[:h, :w]


def test_lattice_figure_separates_a_stride_grid_from_a_photo(data):
    """A real photo at an odd size scores low; the same photo with a faint grid of period 4 (or 2) scores high,
    growing with its amplitude; a grid of a period the generator does not have (5) is not counted."""
    photo = load_image(need(data / "content" / "demo" / "chicago.jpg"), 301)
    h, w = photo.shape[-2:]
    base = float(M.lattice(photo)[0])
    faint, strong = (float(M.lattice(photo + _grid(h, w, a))[0]) for a in (2.0, 8.0))
    assert base < 10 < faint < strong
    assert float(M.lattice(photo + _grid(h, w, 8.0, period=2))[0]) > 10
    assert float(M.lattice(photo + _grid(h, w, 8.0, period=5))[0]) < 2 * base


def phase_energy_reference(y, content, period, window):
    """stride_lattice written with strided slices and loops, in float64."""
    y, content = y.double(), content.double()
    n, c, h, w = y.shape
    total, count = 0.0, 0
    for ty in range(h // window):
        for tx in range(w // window):
            tiles = [t[..., ty * window:(ty + 1) * window, tx * window:(tx + 1) * window] for t in (y, content)]
            phases = [torch.stack([t[..., i::period, j::period].mean(dim=(-2, -1)) for i in range(period)
                                   for j in range(period)], dim=-1) for t in tiles]
            d = [p - p.mean(dim=-1, keepdim=True) for p in phases]
            total += float((d[0] - d[1]).square().sum())
            count += d[0].numel()
    return total / count


def test_stride_lattice_loss_matches_reference_and_sees_only_the_grid(data):
    from instyle.train.losses import stride_lattice

    photo = load_image(need(data / "content" / "demo" / "amber.jpg"), 150)[..., :100, :140]
    g = torch.Generator().manual_seed(1)
    y = (photo + 10 * torch.randn(photo.shape, generator=g) + _grid(100, 140, 3.0)).requires_grad_()
    got = stride_lattice(y, photo, window=32)
    assert abs(float(got) - phase_energy_reference(y.detach(), photo, 4, 32)) <= 1e-5 * float(got)
    got.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert float(stride_lattice(photo, photo)) == 0.0  # the photo's own phase pattern is not penalised
    noise_only = float(stride_lattice(photo + 5 * torch.randn(photo.shape, generator=g), photo))
    with_grid = float(stride_lattice(photo + 5 * torch.randn(photo.shape, generator=g) + _grid(100, 140, 4.0),
                                     photo))
    assert with_grid > 3 * noise_only
