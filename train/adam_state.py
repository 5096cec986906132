"""Adam's moments in a small file that travels with a trained generator, so a later run can go on from it.

The exact-resume state (state.py) holds everything in fp32 and stays on the machine that trained; this file
is the small one that travels (e.g. back from a GPU loan): per parameter (by name) exp_avg and exp_avg_sq in bf16
(fp16 would underflow exp_avg_sq, ~g^2) and Adam's step count, as safetensors (~2 bytes x 2 x parameters, whatever
the generator's size). `--init MODEL` restores it from MODEL's sibling OUT.adam.safetensors: a fresh Adam state
moves every weight by about lr in its first steps: one of the two candidate causes of a continued zoo that came
out worse (bench/results/2026-11-26-h100-warmstart; not tested there).

Instance-norm rows follow the styles by name, like the weights (finetune.row_map): a style the file lacks
starts from the mean of the rows it holds.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from instyle.atomic import atomic_path

FORMAT = "instyle-adam-1"
MOMENTS = ("exp_avg", "exp_avg_sq")


def adam_path(model_path: str | os.PathLike) -> Path:
    """OUT.safetensors -> OUT.adam.safetensors."""
    p = Path(model_path)
    return p.with_name((p.stem if p.suffix == ".safetensors" else p.name) + ".adam.safetensors")


def _norm_params(model: nn.Module) -> set[str]:
    from instyle.models.norm import is_instance_norm

    return {f"{name}.{leaf}" for name, m in model.named_modules() if is_instance_norm(m)
            for leaf in ("weight", "bias")}


def save_moments(optimizer: torch.optim.Adam, model: nn.Module, path: str | os.PathLike, styles: list[str],
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """The moments of `model`'s parameters in `optimizer`, atomically, to `path` (styles: the rows' names)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in model.named_parameters():
        st = optimizer.state.get(p)
        if not st:
            continue
        for k in MOMENTS:
            tensors[f"{name}.{k}"] = st[k].detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "styles": json.dumps(styles)})
    return path


def load_moments(optimizer: torch.optim.Adam, model: nn.Module, path: str | os.PathLike,
                 rows: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Set `optimizer`'s state for `model`'s parameters from `path`; `rows` maps the file's instance-norm rows
    onto the model's styles ([S_file, C] -> [S_model, C]). A parameter whose moments are missing or do not
    fit keeps a fresh state. Returns {"file", "restored", "parameters"}."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- truncated or foreign file: one clear line
        raise ValueError(f"{path}: not a readable Adam state ({type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an instyle Adam state (format {FORMAT})")
    norms = _norm_params(model)
    restored = total = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        total += 1
        if f"{name}.step" not in saved:
            continue
        moments = [saved[f"{name}.{k}"].float() for k in MOMENTS]
        if name in norms and rows is not None:
            moments = [_rows(m, rows, p) for m in moments]
        if any(m.shape != p.shape for m in moments):
            continue
        exp_avg, exp_avg_sq = (torch.empty_like(p, memory_format=torch.preserve_format).copy_(m) for m in moments)
        optimizer.state[p] = {"step": saved[f"{name}.step"].reshape(()).clone(), "exp_avg": exp_avg,
                              "exp_avg_sq": exp_avg_sq.clamp_min(0)}
        restored += 1
    return {"file": path.name, "restored": restored, "parameters": total}


def _rows(m: torch.Tensor, rows, p: torch.Tensor) -> torch.Tensor:
    new = rows(m if m.dim() == 2 else m[None])
    return new if p.dim() == 2 else new[0]
