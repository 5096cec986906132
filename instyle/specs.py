"""What users type, parsed once for every command: device names, image sizes, backend options."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+)(?:x(\d+))?$")

# The engine's backends by name, here so that command lines can offer them without importing torch
# (engine/backends/ holds the table itself and checks it against this list).
BACKEND_NAMES = ("eager", "triton", "fused", "compile", "onnxruntime", "openvino", "tensorrt")
# The precisions a command line offers (int8: a quantized openvino model; instyle/precision.py maps the dtypes).
PRECISION_NAMES = ("fp32", "fp16", "bf16", "int8")
# Images larger than this are refused from their header (decompression bombs); --max-pixels changes it.
DEFAULT_MAX_PIXELS = 2**28
# The style controls' ranges, inclusive (engine/controls.py and the command line's flags check against them).
CONTROL_RANGES = {"strength": (0.0, 1.0), "style_scale": (0.1, 10.0)}


def resolve_device(device="auto"):
    """"auto" -> cuda when available, else cpu; an explicit cuda device must exist."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return dev


def check_control(name: str, value: float, label: str | None = None) -> None:
    """ValueError unless style control `name` (a CONTROL_RANGES key) is in its range; `label` names it in the
    message (a flag such as --style-scale), default the name itself."""
    low, high = CONTROL_RANGES[name]
    if not low <= value <= high:
        raise ValueError(f"{label or name} must be between {low:g} and {high:g}, got {value}")


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080), width first; one number N is N x N. ValueError when malformed."""
    m = _SIZE.match(text.strip().lower())
    if not m or int(m[1]) < 1 or int(m[2] or m[1]) < 1:
        raise ValueError(f"size must be N or WxH with positive integers (e.g. 512 or 1920x1080), got {text!r}")
    return int(m[1]), int(m[2] or m[1])


def parse_option(text: str) -> tuple[str, bool | int | float | str]:
    """'prenorm=all' -> ("prenorm", "all"); values true/false/on/off are bools, numbers are numbers."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key.isidentifier() or not value:
        raise ValueError(f"a backend option is KEY=VALUE (e.g. prenorm=all or graphs=off), got {text!r}")
    if value.lower() in ("true", "on", "yes", "false", "off", "no"):
        return key, value.lower() in ("true", "on", "yes")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value
