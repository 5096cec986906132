"""Style weights for multi-style generators: one style, mixes, and baking a mix into a single-style net.

A multi-style generator (conditional instance norm, models/norm.py) takes N x S style weights. A
convex mix of styles is a weighted sum of their (gamma, beta) pairs, so any fixed mix can be baked into
an ordinary single-style generator with the mixed pairs: every backend that runs single-style models
(fused kernels, exported graphs) then runs the mix with no extra work per pixel.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .norm import is_instance_norm


class StyleError(ValueError):
    """A style name, index or mix that the model cannot apply; the message lists the known styles."""


def style_count(model: nn.Module) -> int:
    return int(getattr(model, "styles", 1))


def mix_weights(names: Sequence[str], mix: Mapping[str | int, float] | str | int | None) -> torch.Tensor:
    """A length-S weight vector (sums to 1) from a style name or index, or {name or index: weight}.

    None picks the first style. Unknown names raise ValueError listing the known ones.
    """
    s = len(names)
    if mix is None:
        mix = {0: 1.0}
    elif isinstance(mix, (str, int)):
        mix = {mix: 1.0}
    w = torch.zeros(s, dtype=torch.float32)
    for key, value in mix.items():
        w[_index(names, key)] += float(value)
    if (w < 0).any() or not torch.isfinite(w).all() or float(w.sum()) <= 0:
        raise StyleError(f"style weights must be >= 0 with a positive sum, got {dict(mix)}")
    return w / w.sum()


def _index(names: Sequence[str], key: str | int) -> int:
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        i = int(key)
        if 0 <= i < len(names):
            return i
        raise StyleError(f"style index {i} out of range (this model has {len(names)} styles: {', '.join(names)})")
    if key in names:
        return list(names).index(key)
    raise StyleError(f"unknown style {key!r} (known: {', '.join(names)})")


def restyle(model: nn.Module, styles: int, rows: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """A copy of `model` holding `styles` styles: every instance-norm layer's gamma and beta become
    rows(old) -- old is [S, C] (a single-style model's [C] as [1, C]) in fp32, the result [styles, C].
    The rest of the weights are copied as they are. Baking a mix, keeping some styles and adding new ones
    are all this one operation."""
    from . import build

    config = {k: v for k, v in model.config.items() if k != "styles"}
    if styles > 1:
        config["styles"] = styles
    device = next(model.parameters()).device
    new = build(model.arch, config).to(device)
    norms = {name for name, m in model.named_modules() if is_instance_norm(m)}
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in norms and leaf in ("weight", "bias"):
            new_rows = rows(value.float() if value.dim() == 2 else value.float()[None])
            assert new_rows.shape == (styles, value.shape[-1]), (key, tuple(new_rows.shape))
            state[key] = new_rows if styles > 1 else new_rows[0]
        else:
            state[key] = value
    new.load_state_dict(state)  # copies into the new model's (fp32) parameters
    return new.train(model.training)


def bake(model: nn.Module, weights: torch.Tensor) -> nn.Module:
    """A single-style generator computing `model` with the fixed style mix `weights` (length S)."""
    w = weights.float().to(next(model.parameters()).device)
    return restyle(model, 1, lambda old: (w @ old)[None])
