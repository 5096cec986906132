"""Pure-PyTorch reference generators: the single source of truth that everything fast is checked against."""
from __future__ import annotations

from torch import nn

from .johnson import JohnsonNet
from .norm import NORMS, PADDINGS, make_norm, make_pad
from .pyramid import PyramidNet

ARCHS: dict[str, type[nn.Module]] = {"johnson": JohnsonNet, "pyramid": PyramidNet}


def build(arch: str, config: dict | None = None) -> nn.Module:
    """A generator of architecture `arch` from its constructor arguments."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    return ARCHS[arch](**(config or {}))


__all__ = ["ARCHS", "NORMS", "PADDINGS", "JohnsonNet", "PyramidNet", "build", "make_norm", "make_pad"]
