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


_GREY = re.compile(r"^\d{1,3}$")
_COLOUR = re.compile(r"^#([0-9a-fA-F]{6})$")
REGIONS_SYNTAX = ("VALUE=MIX;VALUE=MIX;...  VALUE: a grey level 0..255, a colour #rrggbb, or * (every other value); "
                  "MIX: none, NAME, or NAME=W,NAME=W,... (none=W is the photo's share)")


def parse_regions(text: str) -> list[tuple[tuple[int, int, int] | str, dict[str, float]]]:
    """'0=none;255=candy' or '#ff0000=wave;#0000ff=candy=1,mosaic=1;*=none' -> [(value, mix), ...].

    Regions are separated by `;`, a region's value from its mix by the first `=`, a mix's items by `,`, and an
    item's name from its weight by its last `=` (an item without a weight weighs 1). A value is a grey level
    (0..255, the colour (v, v, v)), a colour #rrggbb, or `*` for every value not listed. A mix is `none` (the
    photo), a style name or index, or weighted items, `none` among them: `candy=0.6,none=0.4` is candy at
    strength 0.6. ValueError (one line, quoting the bad part) when malformed."""
    regions, seen = [], set()
    parts = [p.strip() for p in text.split(";")]
    if not text.strip() or any(not p for p in parts[:-1]):
        raise ValueError(f"--regions {text!r}: expected {REGIONS_SYNTAX}")
    for part in filter(None, parts):
        value, sep, mix_text = (s.strip() for s in part.partition("="))
        if _GREY.match(value) and int(value) <= 255:
            key: tuple[int, int, int] | str = (int(value),) * 3
        elif _COLOUR.match(value):
            key = tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        elif value == "*":
            key = "*"
        else:
            raise ValueError(f"--regions: {value!r} is not a grey level 0..255, a colour #rrggbb or *")
        if not sep or not mix_text:
            raise ValueError(f"--regions: region {part!r} has no mix; expected VALUE=MIX, e.g. 255=candy")
        if key in seen:
            raise ValueError(f"--regions: the value {value} is given twice")
        seen.add(key)
        mix: dict[str, float] = {}
        for item in mix_text.split(","):
            name, eq, weight = (s.strip() for s in item.rpartition("=")) if "=" in item else (item.strip(), "", "1")
            try:
                w = float(weight)
            except ValueError:
                w = -1.0
            if not name or not w >= 0 or w == float("inf") or (eq and not weight):
                raise ValueError(f"--regions: {item.strip()!r} in region {part!r}: expected NAME or NAME=WEIGHT "
                                 "with a weight >= 0")
            mix[name] = mix.get(name, 0.0) + w
        if not sum(mix.values()) > 0:
            raise ValueError(f"--regions: region {part!r} has weights summing to 0")
        regions.append((key, mix))
    return regions
