"""Optional fused instance norm for training: swap nn.InstanceNorm2d modules for the Triton op.

`instyle.kernels.instance_norm` (one custom op with a backward, statistics in fp32) replaces the
reference layer when CUDA and Triton are available; otherwise, or if the op is missing or fails a
one-shot check against the reference, the model is left as it is. Parameters are shared, not copied, so
the state dict (and the saved checkpoint) keeps the reference names and values. Conditional IN layers
(several styles) mix their per-sample (gamma, beta) in PyTorch and pass them to the same op as [N, C].
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from instyle.interpreter import interpreting
from instyle.models.norm import ConditionalInstanceNorm2d


class FusedConditionalInstanceNorm(ConditionalInstanceNorm2d):
    """Drop-in for ConditionalInstanceNorm2d: per-sample (gamma, beta) mixed in PyTorch, then one fused call."""

    def __init__(self, ref: ConditionalInstanceNorm2d, fn: Callable):
        nn.Module.__init__(self)
        self.num_features, self.styles, self.eps, self.fn = ref.num_features, ref.styles, ref.eps, fn
        self.weight, self.bias = ref.weight, ref.bias  # shared: the state dict keeps the reference's keys

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style_weights)
        return self.fn(x, gamma, beta, eps=self.eps)


class FusedInstanceNorm(nn.Module):
    """Drop-in for an affine nn.InstanceNorm2d without running stats, computed by `fn`."""

    def __init__(self, ref: nn.InstanceNorm2d, fn: Callable):
        super().__init__()
        self.weight, self.bias, self.eps, self.fn = ref.weight, ref.bias, ref.eps, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.bias, eps=self.eps)


def find_op() -> Callable | None:
    """instyle.kernels.instance_norm if it exists and Triton imports, else None."""
    try:
        from instyle.kernels import instance_norm as op
    except Exception:  # no triton, or an import error in a work-in-progress kernel
        return None
    return op if callable(op) else None


def swap_instance_norm(model: nn.Module, fn: Callable) -> int:
    """Replace every affine, stat-less InstanceNorm2d (FusedInstanceNorm) and conditional IN
    (FusedConditionalInstanceNorm) in `model`; returns the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ConditionalInstanceNorm2d:
                setattr(parent, name, FusedConditionalInstanceNorm(child, fn))
                count += 1
            elif isinstance(child, nn.InstanceNorm2d) and child.affine and not child.track_running_stats:
                setattr(parent, name, FusedInstanceNorm(child, fn))
                count += 1
    return count


def _agrees(fn: Callable, device: torch.device) -> bool:
    """A tiny forward/backward of `fn` against F.instance_norm on `device`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 7, generator=g).to(device).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(8, generator=g)).to(device).requires_grad_(True)
    b = (0.1 * torch.randn(8, generator=g)).to(device).requires_grad_(True)
    try:
        y = fn(x, w, b, eps=1e-5)
        gx, gw = torch.autograd.grad((y * y).sum(), (x, w))
        ref = torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)
        rx, rw = torch.autograd.grad((ref * ref).sum(), (x, w))
    except Exception as e:
        warnings.warn(f"fused instance norm unusable ({type(e).__name__}: {e}); using the reference", stacklevel=3)
        return False
    ok = all(torch.allclose(a, r, atol=1e-3, rtol=1e-3) for a, r in ((y, ref), (gx, rx), (gw, rw)))
    if not ok:
        warnings.warn("fused instance norm disagrees with the reference; using the reference", stacklevel=3)
    return ok


def maybe_fuse(model: nn.Module, device: torch.device, mode: str = "auto") -> int:
    """Swap in the fused op per `mode` (auto: when CUDA + the op work; on: required; off: never)."""
    if mode == "off":
        return 0
    # off CUDA only when asked for explicitly, under the Triton interpreter (tests, campaign dry runs)
    interpreted = mode == "on" and interpreting()
    fn = find_op() if device.type == "cuda" or interpreted else None
    if fn is None or not _agrees(fn, device):
        if mode == "on":
            raise RuntimeError("--fused on needs a CUDA device (or TRITON_INTERPRET=1), Triton and a working "
                               "instyle.kernels.instance_norm_forward")
        return 0
    return swap_instance_norm(model, fn)
