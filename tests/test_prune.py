"""train/prune.py: cutting a narrower Johnson generator out of a trained one (the slim zoo's starting point)."""
from __future__ import annotations

import torch

from instyle.models.johnson import JohnsonNet
from instyle.train.prune import cut


def _norms(model: JohnsonNet):
    blocks = [getattr(model, n) for n in model.res_names]
    return [model.in1, model.in2, model.in3, *(b.in1 for b in blocks), *(b.in2 for b in blocks), model.in4,
            model.in5]


def _random(width: int, styles: int, seed: int) -> JohnsonNet:
    torch.manual_seed(seed)
    model = JohnsonNet(width=width, blocks=2, styles=styles)
    with torch.no_grad():
        for norm in _norms(model):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _weights(n: int, styles: int) -> torch.Tensor:
    return torch.softmax(torch.randn(n, styles, generator=torch.Generator().manual_seed(1)), dim=1)


@torch.no_grad()
def test_cutting_to_the_same_width_is_the_same_network():
    model = _random(8, 3, 0)
    x = torch.rand(2, 3, 37, 45) * 255
    w = _weights(2, 3)
    torch.testing.assert_close(cut(model, 8)(x, w), model(x, w), rtol=0, atol=1e-4)


@torch.no_grad()
def test_dead_channels_are_the_ones_cut_and_the_output_does_not_change():
    """Channels whose every norm has gamma = beta = 0 carry nothing (ReLU(0) = 0, and the trunk's sum stays 0):
    importance must rank them last, so cutting them away leaves the output as it was."""
    model = _random(8, 3, 2)
    for norm in _norms(model):  # the upper half of every layer's channels dies
        half = norm.num_features // 2
        norm.weight[:, half:] = 0
        norm.bias[:, half:] = 0
    x = torch.rand(2, 3, 41, 29) * 255
    w = _weights(2, 3)
    slim = cut(model, 4)
    assert slim.config["width"] == 4 and slim.styles == 3
    torch.testing.assert_close(slim(x, w), model(x, w), rtol=0, atol=1e-3)


def test_cut_refuses_what_it_cannot_cut():
    import pytest

    with pytest.raises(ValueError, match="nearest"):
        cut(JohnsonNet(width=8, blocks=1, upsampling="transposed"), 4)
    with pytest.raises(ValueError, match="between 1"):
        cut(JohnsonNet(width=8, blocks=1), 16)
