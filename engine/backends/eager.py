"""Backend "eager": the PyTorch module as it is (the reference every other backend is checked against)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype))

    return run
