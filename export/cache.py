"""The on-disk cache of exported artifacts (ONNX files, TensorRT engines).

Files live under ~/.cache/instyle/<kind>/ ($INSTYLE_CACHE replaces ~/.cache/instyle), named by a hash of
everything that determines their bytes: the weights, the generator config, and the export options. Writers
use atomic_path, so two processes racing to fill the same entry both leave a complete file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from torch import nn


def cache_dir(kind: str) -> Path:
    root = os.environ.get("INSTYLE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "instyle"
    return base / kind


def model_key(model: nn.Module, **options) -> str:
    """A hex digest of `model`'s fp32 weights, architecture, config and the export `options`."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"arch": getattr(model, "arch", type(model).__name__),
                         "config": getattr(model, "config", None), "torch": torch.__version__,
                         **options}, sort_keys=True, default=str).encode())
    _hash_weights(h, model)
    return h.hexdigest()[:24]


def weights_digest(model: nn.Module) -> str:
    """A sha256 of `model`'s architecture, config and fp32 weights alone (no versions): which weights an artifact
    shipped with the package was built from."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": getattr(model, "arch", type(model).__name__),
                         "config": getattr(model, "config", None)}, sort_keys=True, default=str).encode())
    _hash_weights(h, model)
    return h.hexdigest()


def _hash_weights(h, model: nn.Module) -> None:
    import torch

    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def why(e: BaseException) -> str:
    """One short line for a note on why a cache entry or a conversion was passed over."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__
