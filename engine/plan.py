"""The engine's view of a generator: its step list (models/graph.py) and what runners derive from it.

The generators describe themselves (`model.steps()`, next to their forward); the fused runner of the
triton backend, the tiled runner and the memory estimates all execute or walk that one list.
`run(steps, x, post)` executes it on whole tensors (`post` is the pointwise tail: eager PyTorch or the
fused kernel).
"""
from __future__ import annotations

from fractions import Fraction

from torch import nn

from instyle.models.graph import Post, Step, eager_post, last_use, run

__all__ = ["Post", "Step", "build", "channels", "eager_post", "in_channels", "last_use", "run", "scales"]


def build(model: nn.Module) -> list[Step]:
    """The step list of a generator (ValueError for modules that do not describe themselves)."""
    if not callable(getattr(model, "steps", None)):
        raise ValueError(f"the engine has no step plan for {type(model).__name__} (known: JohnsonNet, PyramidNet)")
    return model.steps()


def in_channels(model: nn.Module) -> int:
    return getattr(model, "in_channels", 3)


def scales(steps: list[Step]) -> list[Fraction]:
    """Resolution of every activation relative to the input (index 0 is the input)."""
    out = [Fraction(1)]
    for step in steps:
        out.append(out[step.srcs[0]] * step.ratio)
    return out


def channels(steps: list[Step], in_channels: int) -> list[int]:
    return [in_channels] + [s.channels for s in steps]
