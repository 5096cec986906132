"""Triton kernels, one op per file, each with its plain-PyTorch `_ref` and a torch.library op.

Imports only torch and triton.
"""
from . import instance_norm_backward  # noqa: F401  (registers autograd for instyle::instance_norm)
from .conv_in_gemm import conv_in, conv_in_ref  # fused conv-IN blocks
from .conv_in_normalize import in_apply, in_apply_ref  # IN applied once, in a separate pass
from .instance_norm_forward import instance_norm, instance_norm_ref

__all__ = ["instance_norm", "instance_norm_ref", "conv_in", "conv_in_ref", "in_apply", "in_apply_ref"]
