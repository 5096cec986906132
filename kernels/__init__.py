"""Triton kernels, one op per file, each with its plain-PyTorch `_ref` and a torch.library op.

Imports only torch and triton.
"""
from . import instance_norm_backward  # noqa: F401  (registers autograd for instyle::instance_norm)
from .instance_norm_forward import instance_norm, instance_norm_ref

__all__ = ["instance_norm", "instance_norm_ref"]

from .conv_in_gemm import conv_in, conv_in_ref  # noqa: E402  (fused conv-IN blocks: kernels/conv_in_gemm.py)

__all__ += ["conv_in", "conv_in_ref"]
from .conv_in_normalize import in_apply, in_apply_ref  # noqa: E402  (IN applied once: kernels/conv_in_normalize.py)

__all__ += ["in_apply", "in_apply_ref"]
