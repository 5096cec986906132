"""Starting from a trained generator: fine-tuning new styles into it (only their (gamma, beta) rows learn),
or warm-starting a run from its weights (everything learns).

With conditional instance norm a style is nothing but one (gamma, beta) row per instance-norm layer
(Dumoulin, Shlens & Kudlur 2017: a new style can be learnt by training its rows alone). `extend` loads a
trained generator (one style or several) and appends rows for the new styles, initialised to the mean of
the existing rows; `trainable_rows` freezes everything else: the convolutions, shared by every style, keep
their weights, and so do the existing styles' rows, whose gradients are zeroed (Adam never moves a
parameter whose gradient has always been zero). `warm_start` maps a trained generator's rows onto a
run's style list by name, so more training continues where a shorter run stopped (the zoo's second loan).
"""
from __future__ import annotations

import json
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


def row_map(base_names: list[str], names: list[str]):
    """[len(base_names), C] -> [len(names), C]: each name's row from the base, a new name the base rows' mean."""

    def rows(old: torch.Tensor) -> torch.Tensor:
        mean = old.mean(0)
        return torch.stack([old[base_names.index(n)] if n in base_names else mean for n in names])

    return rows


def warm_start(base_path: str | os.PathLike, arch: str, config: dict, names: list[str]) -> tuple[nn.Module, dict]:
    """A generator for `names` starting from the trained one at base_path: each style found there by name keeps
    its rows, a new style starts from the mean of the base's rows; every weight is trainable. Returns
    (model, what to record: base file, its styles and training length). `config` (the run's generator
    settings) must agree with the base's, or the run would not be the network the user asked for."""
    base, meta = checkpoint.load(base_path)
    if base.arch != arch:
        raise ValueError(f"--init {base_path}: a {base.arch} generator, this run trains {arch}")
    differ = sorted(k for k, v in config.items() if k != "styles" and base.config.get(k, v) != v)
    if differ:
        raise ValueError(f"--init {base_path}: its generator has " + ", ".join(
            f"{k}={base.config.get(k)!r}" for k in differ) + " but this run asks for " + ", ".join(
            f"{k}={config[k]!r}" for k in differ))
    base_names = [e["name"] for e in checkpoint.style_entries(meta)]
    if len(names) > 1 and base.config.get("norm", "instance") != "instance":
        raise ValueError(f"--init {base_path}: several styles need an instance-norm generator, "
                         f"this one has norm {base.config.get('norm')!r}")

    rows = row_map(base_names, names)
    model = restyle(base, len(names), rows)
    training = json.loads(meta.get("training") or "{}")
    record = {"file": os.path.basename(base_path), "styles": base_names,
              "iterations": training.get("iterations"), "batch_size": training.get("batch_size"),
              "kept": [n for n in names if n in base_names]}
    return model, record
