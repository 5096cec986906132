"""Backend "compile": torch.compile of the reference generator.

Shapes: N, H and W are dynamic (`dynamic=True`), not bucketed. Bucketing pads an image up to a bucket
size, and extra pixels change the instance-norm statistics, so a bucketed output would not equal the
reference. With symbolic sizes one compiled graph serves all sizes; dynamo specializes only sizes 0
and 1 (so batch 1 and batch > 1 are two graphs), not one graph per photo size -- no recompilation storm.

Mode: on CUDA, inductor's max-autotune without its own CUDA graphs ("max-autotune-no-cudagraphs"):
inductor's cudagraph trees would record one graph per distinct shape without bound, so the compiled
function goes behind the engine's LRU GraphCache instead (the table's `graphs`, as for the triton backend).
On CPU, inductor's default mode. `mode` picks another of inductor's modes ("default" compiles in a fraction of
max-autotune's time). `compiler` is exposed for tests ("eager"/"aot_eager" skip codegen).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype, *, compiler: str = "inductor",
                mode: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    options = {}
    if compiler == "inductor":
        options["mode"] = mode or ("max-autotune-no-cudagraphs" if device.type == "cuda" else "default")
    elif mode is not None:
        raise ValueError(f"mode {mode!r} is inductor's; compiler {compiler!r} has no modes")
    compiled = torch.compile(model, backend=compiler, dynamic=True, **options)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return compiled(x.to(dtype))

    return forward
