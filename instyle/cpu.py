"""What this CPU's instruction set offers (from /proc/cpuinfo; empty where that is not readable)."""
from __future__ import annotations

import functools
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot-product instructions: where int8 beats float


@functools.cache
def isa() -> tuple[str, ...]:
    """The CPU's vector/matrix extensions that decide CPU speed per precision."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in ISA_FLAGS if f in flags)


def has_int8_dot() -> bool:
    return any(f in isa() for f in INT8_DOT)


def has_amx() -> bool:
    """AMX tiles usable here: the CPU has them and oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, which OpenVINO honours)
    does not rule them out."""
    import os

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ("ALL", "DEFAULT") and "AMX" not in cap:
        return False
    return any(f.startswith("amx") for f in isa())
