"""Fine-tuning new styles into a trained generator: only the new styles' (gamma, beta) rows learn.

With conditional instance norm a style is nothing but one (gamma, beta) row per instance-norm layer
(Dumoulin, Shlens & Kudlur 2017: a new style can be learnt by training its rows alone). `extend` loads a
trained generator (one style or several) and appends rows for the new styles, initialised to the mean of
the existing rows; `trainable_rows` freezes everything else: the convolutions, shared by every style, keep
their weights, and so do the existing styles' rows, whose gradients are zeroed (Adam never moves a
parameter whose gradient has always been zero).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from instyle import checkpoint
from instyle.models.norm import ConditionalInstanceNorm2d
from instyle.models.styles import restyle


def extend(base_path: str | os.PathLike, new_styles: int) -> tuple[nn.Module, list[dict]]:
    """(a generator with the base's styles followed by `new_styles` new ones, the base's style entries)."""
    base, meta = checkpoint.load(base_path)
    if base.config.get("norm", "instance") != "instance":
        raise ValueError(f"{base_path}: fine-tuning styles needs an instance-norm generator, "
                         f"this one has norm {base.config.get('norm')!r}")
    entries = checkpoint.style_entries(meta)
    model = restyle(base, len(entries) + new_styles,
                    lambda old: torch.cat([old, old.mean(0, keepdim=True).expand(new_styles, -1)]))
    return model, entries


def trainable_rows(model: nn.Module, first_new: int) -> list[nn.Parameter]:
    """Freeze `model` but the conditional-IN rows from `first_new` on; returns the parameters to optimise."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for m in model.modules():
        if isinstance(m, ConditionalInstanceNorm2d):
            for p in (m.weight, m.bias):
                p.requires_grad_(True)
                p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:first_new]), g[first_new:]]))
                params.append(p)
    return params
