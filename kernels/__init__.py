"""Triton kernels, one op per file, each with its plain-PyTorch `_ref` and a torch.library op.

Imports only torch and triton.
"""
from .instance_norm import instance_norm, instance_norm_ref

__all__ = ["instance_norm", "instance_norm_ref"]
