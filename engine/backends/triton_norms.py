"""Backend "triton": the generator with its norm tails fused into one Triton kernel each.

Every IN(+ReLU)(+residual) tail of the step plan (engine/plan.py) becomes one call of
`instyle::instance_norm` (kernels/instance_norm_forward.py): y = act(IN(conv(x)) * w + b) + r, statistics in fp32.
The convolutions stay cuDNN's. The reference module is not modified: the plan only reads its
submodules. Other norms (batch, none) keep their PyTorch tail.

On CUDA the table (engine/backends) puts the forward behind a GraphCache: one CUDA graph per input
shape, LRU-bounded. Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1, tests only).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.interpreter import interpreting

from .. import plan


def _kernel():
    try:
        from instyle.kernels import instance_norm
    except ImportError as e:
        raise BackendUnavailable(f"backend 'triton' needs the Triton kernels ({e})") from None
    return instance_norm


def fused_post(step: plan.Step, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    if not step.instance_norm:
        return plan.eager_post(step, y, residual)
    norm = step.norm
    return _kernel()(y, norm.weight, norm.bias, eps=norm.eps, activation="relu" if step.relu else None,
                     residual=residual)


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """The step list with its IN tails fused."""
    if device.type != "cuda" and not interpreting():
        raise BackendUnavailable("backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to run the "
                                 "kernels in the Triton interpreter, for tests)")
    _kernel()
    try:
        steps = plan.build(model)
    except ValueError as e:
        raise BackendUnavailable(f"backend 'triton': {e}") from None

    def forward(x: torch.Tensor) -> torch.Tensor:
        return plan.run(steps, x.to(dtype), fused_post)

    return forward
