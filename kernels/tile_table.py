"""Measured GPU tiles per layer: the table the campaign's sweep step writes (bench/campaign/sweep.py) and the conv
launchers read before their rule-based pinned configs (conv_in_gemm.pinned_config, conv_tma.pinned_config).

The committed table is kernels/tiles.json (none yet: no loan has run the sweep),
{"arch": "sm_90", "source": ..., "tiles": {layer key: tile}}, a tile being
{BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages}. It applies only on its arch (a tile that fits an H100's shared
memory may not fit another GPU's); without it, or for a layer it does not list, the rules decide. The sweep times
candidates through `override`, which wins over the table for one layer key while it is active.
"""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Callable, Optional

import torch
import triton

TABLE_PATH = Path(__file__).with_name("tiles.json")
FIELDS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
OPTIONS = ("num_warps", "num_stages")
CENSUS_ARCH = "sm_90"  # the arch the census (bench/campaign/census.py) stands for: no GPU to ask
_overrides: dict[str, dict] = {}
_picks: Optional[list] = None  # (key, tile) of every pick while `recording` is active


def layer_key(kind: str, *, cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False,
              order: str = "taps", pix: int = 1, prologue: str = "", dtype: torch.dtype = torch.float16) -> str:
    """A layer's name in the table: the kernel, its shape class, K order and prologue, e.g.
    "conv_in k3 s1 128>128 taps norm+skip+wskip float16" (the tile depends on these, not on the image size; the
    prologue changes register pressure: with 4 warps the skip-adding variants spilled where others did not)."""
    bits = [kind, f"k{kernel}", f"s{stride}"] + (["up"] if upsample else []) + [f"{cin}>{cout}", order]
    if pix > 1:
        bits.append(f"pix{pix}")
    if prologue:
        bits.append(prologue)
    return " ".join(bits + [str(dtype).removeprefix("torch.")])


def _table() -> dict:
    return _load(TABLE_PATH)


@functools.lru_cache(maxsize=None)
def _load(path: Path) -> dict:
    if not path.is_file():
        return {"arch": None, "tiles": {}}
    table = json.loads(path.read_text())
    for key, tile in table["tiles"].items():
        if set(tile) != set(FIELDS + OPTIONS):
            raise ValueError(f"{path}: tile {key!r} needs exactly {', '.join(FIELDS + OPTIONS)}")
    return table


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def device_arch(device: torch.device) -> str:
    """sm_XY of a CUDA device; any other device (the census's CPU tensors) stands for CENSUS_ARCH."""
    if device.type != "cuda":
        return CENSUS_ARCH
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


def lookup(key: str, device: torch.device) -> Optional[triton.Config]:
    """The measured tile of layer `key` on `device`'s arch (an active override first), or None."""
    tile = _overrides.get(key)
    if tile is None:
        table = _table()
        if table["arch"] != device_arch(device):
            return None
        tile = table["tiles"].get(key)
    if tile is None:
        return None
    return triton.Config({k: tile[k] for k in FIELDS}, num_warps=tile["num_warps"], num_stages=tile["num_stages"])


def pick(key: str, device: torch.device, rule: Callable[[], triton.Config]) -> triton.Config:
    """The tile a launcher runs layer `key` with: lookup's, else rule()'s."""
    cfg = lookup(key, device) or rule()
    if _picks is not None:
        _picks.append((key, as_tile(cfg), as_tile(rule())))
    return cfg


@contextlib.contextmanager
def recording():
    """Yields a list that receives (layer key, tile picked, the rules' tile) for every pick while active (the
    sweep's census of a layer)."""
    global _picks
    previous, _picks = _picks, []
    try:
        yield _picks
    finally:
        _picks = previous


def as_tile(cfg: triton.Config) -> dict:
    """A triton.Config as a table entry."""
    return {**{k: cfg.kwargs[k] for k in FIELDS}, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


@contextlib.contextmanager
def override(key: str, cfg: triton.Config):
    """Run layer `key` with tile `cfg` while active (the sweep's candidates)."""
    previous = _overrides.get(key)
    _overrides[key] = as_tile(cfg)
    try:
        yield
    finally:
        if previous is None:
            _overrides.pop(key, None)
        else:
            _overrides[key] = previous
