"""Checkpoints: safetensors with string metadata, and import of pytorch/examples `.pth` files.

Metadata keys (all strings): `instyle.format` ("1"), `arch`, `config` (JSON of the constructor's
arguments), `style` (name; of a multi-style file, its first style), `training` (JSON), and for
multi-style files `styles` (JSON list of {"name", "source"}, one per conditional-IN row). `read_metadata` parses the safetensors header with the
standard library alone, so tools can list models without importing torch.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path

from instyle.atomic import atomic_path
from instyle.paths import ZOO_DIR

FORMAT_VERSION = "1"
# pytorch/examples InstanceNorm2d layers of old releases carried running stats that IN never uses
_LEGACY_KEY = re.compile(r"(^|\.)in\d+\.running_(mean|var)$|\.num_batches_tracked$")


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the cause."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors file, read without torch."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    return dict(header.get("__metadata__", {}))


def save(model, path: str | os.PathLike, *, style: str = "", training: dict | None = None,
         dtype=None, styles: list[dict] | None = None) -> Path:
    """Write `model`'s weights and metadata atomically; `dtype` (e.g. torch.float16) casts floats.

    styles: for a multi-style model, one {"name", "source"} per style (its conditional-IN rows' order)."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {
        "instyle.format": FORMAT_VERSION,
        "arch": model.arch,
        "config": json.dumps(model.config),
        "style": style,
        "training": json.dumps(training or {}),
    }
    count = int(getattr(model, "styles", 1))
    if count > 1:
        styles = styles or [{"name": f"style{i}", "source": ""} for i in range(count)]
        if len(styles) != count:
            raise ValueError(f"{len(styles)} style names for a {count}-style model")
        meta["styles"] = json.dumps(styles)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _load_pth(path: Path) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: the pickle asks to run code or build objects that are not plain tensors "
            f"({first[:160]}); only plain state dicts load") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if not _LEGACY_KEY.search(k)}


def _infer_johnson_config(state: dict, path: Path) -> dict:
    """The TransformerNet variant stored in a pytorch/examples state dict."""
    if "conv1.conv2d.weight" not in state:
        raise CheckpointError(f"{path}: not a pytorch/examples TransformerNet state dict (no conv1.conv2d.weight)")
    width = state["conv1.conv2d.weight"].shape[0]
    blocks = len({k.split(".")[0] for k in state if re.match(r"res\d+\.", k)})
    norm = "instance" if "in1.weight" in state else "none"
    transposed = state["deconv1.conv2d.weight"].shape[0] == 4 * width  # ConvTranspose2d is (in, out, k, k)
    return dict(width=width, blocks=blocks, norm=norm, padding="reflect",
                upsampling="transposed" if transposed else "nearest")


def load(path: str | os.PathLike, *, device="cpu"):
    """Build the generator stored in `path` (.safetensors or pytorch/examples .pth); returns (model, metadata)."""
    from instyle import models

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = read_metadata(path)
        if meta.get("instyle.format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: not an instyle checkpoint (metadata instyle.format missing or not "
                                  f"{FORMAT_VERSION!r})")
        try:
            state = load_file(str(path))
            config = json.loads(meta["config"])
        except (SafetensorError, KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: damaged checkpoint ({e})") from None
        arch = meta.get("arch", "")
    else:
        state = _load_pth(path)
        arch, config = "johnson", _infer_johnson_config(state, path)
        meta = {"instyle.format": FORMAT_VERSION, "arch": arch, "config": json.dumps(config),
                "style": path.stem, "training": json.dumps({"imported_from": path.name})}
    try:
        model = models.build(arch, config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config ({e})") from None
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the {arch} architecture "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), meta


def style_names(meta: dict[str, str]) -> list[str]:
    """The style names of a checkpoint's metadata: the `styles` list, else [`style`]."""
    if meta.get("styles"):
        try:
            return [str(s["name"]) for s in json.loads(meta["styles"])]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise CheckpointError(f"bad 'styles' metadata ({e})") from None
    return [meta.get("style") or "style"]


def shipped() -> dict[str, Path]:
    """Styles shipped in instyle/zoo/, in their listed order (first is the default)."""
    order_file = ZOO_DIR / "index.json"
    found = {p.stem: p for p in sorted(ZOO_DIR.glob("*.safetensors"))}
    if order_file.is_file():
        order = [n for n in json.loads(order_file.read_text()).get("order", []) if n in found]
        found = {n: found[n] for n in order + [n for n in found if n not in order]}
    return found


def resolve(model: str | os.PathLike | None) -> Path:
    """A model name (shipped style) or path -> file path; None -> the default shipped style."""
    zoo = shipped()
    if model is None:
        if not zoo:
            raise CheckpointError("no model given and no shipped styles yet: pass --model PATH "
                                  "(a .safetensors or pytorch/examples .pth file)")
        return next(iter(zoo.values()))
    text = str(model)
    if text in zoo:
        return zoo[text]
    path = Path(text).expanduser()
    if path.exists():
        return path
    known = f" (shipped: {', '.join(zoo)})" if zoo else ""
    raise CheckpointError(f"{text}: no such model file or shipped style{known}")
