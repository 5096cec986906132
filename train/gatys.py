"""Gatys et al.'s baseline: optimise the image itself against the same perceptual loss the trainer uses.

Slow (hundreds of VGG forward/backward passes per image) but needs no training: the quality reference
the feed-forward generators approximate. Pixels are optimised in 0..255 units and clamped to 0..255
after every step (L-BFGS: after every outer step).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .losses import PerceptualLoss

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")


def stylize(loss: PerceptualLoss, content: torch.Tensor, *, steps: int = 300, optimizer: str = "lbfgs",
            lr: float | None = None, init: str = "content", seed: int = 0,
            callback: Callable[[int, dict[str, float]], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Optimise an image (1,3,H,W, 0..255) to match `content` (content loss) and the loss's style Grams.

    `steps` counts loss evaluations for both optimizers. Returns the image and the per-step loss history.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    content = content.detach().float().contiguous()
    if init == "content":
        x = content.clone(memory_format=torch.contiguous_format)
    else:
        g = torch.Generator().manual_seed(seed)
        x = (128 + 20 * torch.randn(content.shape, generator=g)).to(content.device)
    x.requires_grad_(True)
    history: list[dict] = []

    def evaluate() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        terms = loss(x, content)
        terms["total"].backward()
        history.append({k: float(v.detach()) for k, v in terms.items()})
        if callback is not None:
            callback(len(history), history[-1])
        return terms["total"]

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=lr or 1.0, max_iter=20, history_size=50, tolerance_grad=0,
                                tolerance_change=0, line_search_fn="strong_wolfe")
        while len(history) < steps:
            before = len(history)
            opt.param_groups[0]["max_eval"] = steps - before  # never run past `steps` evaluations
            opt.param_groups[0]["max_iter"] = max(1, min(20, steps - before))
            opt.step(evaluate)
            with torch.no_grad():
                x.clamp_(0, 255)
            if len(history) == before:
                break
    else:
        opt = torch.optim.Adam([x], lr=lr or 4.0)
        for _ in range(steps):
            evaluate()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 255)
    return x.detach(), history
