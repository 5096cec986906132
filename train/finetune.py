"""Fine-tuning new styles into a trained generator: only the new styles' (gamma, beta) rows learn.

With conditional instance norm a style is nothing but one (gamma, beta) row per instance-norm layer
(Dumoulin, Shlens & Kudlur 2017: a new style can be learnt by training its rows alone). `extend` loads a
trained generator (one style or several) and appends rows for the new styles, initialised to the mean of
the existing rows; `trainable_rows` freezes everything else: the convolutions, shared by every style, keep
their weights, and so do the existing styles' rows, whose gradients are zeroed (Adam never moves a
parameter whose gradient has always been zero).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from instyle import checkpoint, models
from instyle.models.norm import ConditionalInstanceNorm2d


def extend(base_path: str | os.PathLike, new_styles: int) -> tuple[nn.Module, list[dict]]:
    """(a generator with the base's styles followed by `new_styles` new ones, the base's style entries)."""
    base, meta = checkpoint.load(base_path)
    if base.config.get("norm", "instance") != "instance":
        raise ValueError(f"{base_path}: fine-tuning styles needs an instance-norm generator, "
                         f"this one has norm {base.config.get('norm')!r}")
    names = checkpoint.style_names(meta)
    entries = json.loads(meta["styles"]) if meta.get("styles") else [{"name": names[0], "source": ""}]
    config = {k: v for k, v in base.config.items() if k != "styles"}
    config["styles"] = len(names) + new_styles
    model = models.build(base.arch, config)
    cond = {name for name, m in model.named_modules() if isinstance(m, ConditionalInstanceNorm2d)}
    have = base.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        old = have[key].float()
        if key.rpartition(".")[0] in cond:  # [S_base, C] (or the plain IN's [C]) + new rows
            rows = old if old.dim() == 2 else old[None]
            state[key] = torch.cat([rows, rows.mean(0, keepdim=True).expand(new_styles, -1)])
        else:
            state[key] = old
    model.load_state_dict(state)
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
