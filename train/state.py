"""Resumable training state: one torch file beside the generator checkpoint, written atomically.

The generator itself goes to OUT (.safetensors via instyle.checkpoint.save); everything needed to
continue bit-exactly (model and optimizer state, GradScaler, RNG states, global sample position, step)
goes to OUT's `.state.pt` sibling. Both writes go through instyle.atomic.atomic_path: a crash or kill
mid-write leaves the previous file intact, never a torn one. Loading uses weights_only=True (the state
holds only tensors and plain Python containers).
"""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from instyle.atomic import atomic_path

STATE_FORMAT = 1


def state_path(out: str | Path) -> Path:
    """OUT.safetensors -> OUT.state.pt (the resumable state)."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt") if out.suffix == ".safetensors" else Path(str(out) + ".state.pt")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: str | Path, state: dict) -> Path:
    """torch.save `state` (plus format tag) to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)
    return path


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from (it is written every "
                                f"--checkpoint-every steps beside the output)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncation, pickle refusal: one clear line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"{path}: damaged or foreign training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not an instyle training state (format {STATE_FORMAT})")
    return state


def git_rev() -> str | None:
    """`git rev-parse HEAD` of the project checkout, None when unavailable."""
    from instyle.paths import PROJECT_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
