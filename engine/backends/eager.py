"""Backend "eager": the PyTorch module as it is (the reference every other backend is checked against).

A multi-style module takes the style weights as its second input, as the exported graphs do: no baking."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        return model(x.to(dtype)) if style_weights is None else model(x.to(dtype), style_weights.to(x.device))

    return run
