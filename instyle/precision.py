"""Precision names and torch dtypes: the one table every subpackage uses."""
from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                                  "int8": torch.int8}
NAMES: dict[torch.dtype, str] = {d: n for n, d in DTYPES.items()}
# int8 is a quantized backend precision (openvino): the PyTorch module itself stays fp32
_MODULE_DTYPES = {"int8": torch.float32}


def module_dtype(name: str) -> torch.dtype:
    """The dtype the PyTorch module is cast to for precision `name` (the backend may run lower)."""
    return _MODULE_DTYPES.get(name, DTYPES[name])


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def name_of(dtype: torch.dtype) -> str | None:
    """"fp32" | "fp16" | "bf16" for those dtypes, None for any other."""
    return NAMES.get(dtype)
