"""Checkpoints: safetensors with string metadata, and import of pytorch/examples `.pth` files.

Metadata keys (all strings): `instyle.format` ("1"), `arch`, `config` (JSON of the constructor's
arguments), `style` (name; of a multi-style file, its first style), `training` (JSON), and for
multi-style files `styles` (JSON list of {"name", "source"}, one per conditional-IN row). `read_metadata` parses the
safetensors header with the standard library alone, so tools can list models without importing torch.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path

from instyle.atomic import atomic_path
from instyle.errors import CheckpointError
from instyle.paths import ZOO_DIR

FORMAT_VERSION = "1"
# pytorch/examples InstanceNorm2d layers of old releases carried running stats that IN never uses
_LEGACY_KEY = re.compile(r"(^|\.)in\d+\.running_(mean|var)$|\.num_batches_tracked$")
_MAX_HEADER = 100_000_000


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors file, read without torch."""
    return dict(_read_header(Path(path)).get("__metadata__", {}))


def _read_header(path: Path) -> dict:
    """The parsed safetensors header, checked to be a JSON object whose metadata is a string map."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            text = f.read(n)
            if len(text) < n:
                raise CheckpointError(f"{path}: not a safetensors file (truncated header)")
            header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({_first_line(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (the header is a JSON {type(header).__name__}, "
                              f"not an object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: damaged checkpoint (__metadata__ is not a map of strings)")
    return header


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


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

    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (empty file)")
    if head[:4] != b"PK\x03\x04" and head[0] != 0x80:  # torch.save: a zip archive, or a pickle (legacy format)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL" in text or "Unsupported" in text or "weights_only" in text.lower() or "Weights only" in text:
            match = re.search(r"(unsupported GLOBAL [^\s]+|Unsupported[^\n.]*)", text)
            raise CheckpointError(
                f"{path}: refused: the pickle asks to run code or build objects that are not plain tensors "
                f"({match.group(0) if match else _first_line(e)}); only plain state dicts load") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
    except EOFError:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (empty or truncated file)") from None
    except Exception as e:  # torch.load on arbitrary bytes raises almost anything (KeyError, RuntimeError, ...)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: not a state dict")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: {k}: a {type(v).__name__}, not a tensor")
    return {k.removeprefix("module."): v for k, v in obj.items() if not _LEGACY_KEY.search(k)}


def _infer_johnson_config(shapes: dict[str, tuple[int, ...]], path: Path) -> dict:
    """The TransformerNet variant stored in a pytorch/examples state dict (from its tensor shapes alone)."""
    for key, rank in (("conv1.conv2d.weight", 4), ("deconv1.conv2d.weight", 4)):
        if key not in shapes:
            raise CheckpointError(f"{path}: not a pytorch/examples TransformerNet state dict (no {key})")
        if len(shapes[key]) != rank:
            raise CheckpointError(f"{path}: {key}: shape {list(shapes[key])} is not a {rank}-d conv weight")
    width = shapes["conv1.conv2d.weight"][0]
    blocks = len({k.split(".")[0] for k in shapes if re.match(r"res\d+\.", k)})
    norm = "instance" if "in1.weight" in shapes else "none"
    transposed = shapes["deconv1.conv2d.weight"][0] == 4 * width  # ConvTranspose2d is (in, out, k, k)
    return dict(width=width, blocks=blocks, norm=norm, padding="reflect",
                upsampling="transposed" if transposed else "nearest")


def _safetensors_shapes(header: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, before any tensor is read."""
    shapes = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if not isinstance(v, dict) or not isinstance(v.get("shape"), list) or \
                not all(isinstance(d, int) and d >= 0 for d in v["shape"]):
            raise CheckpointError(f"{path}: {k}: damaged tensor entry in the header")
        shapes[k] = tuple(v["shape"])
    return shapes


def _check_shapes(expected: dict, shapes: dict[str, tuple[int, ...]], path: Path, arch: str, config: dict) -> None:
    """Every key the model expects is in the file with the model's shape, and nothing else is."""
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{path}: weights do not match the {arch} architecture ({'; '.join(parts)})")
    for k, want in expected.items():
        if tuple(want.shape) != shapes[k]:
            raise CheckpointError(f"{path}: {k}: shape {list(shapes[k])} in the file, but the {arch} config "
                                  f"{json.dumps(config, separators=(',', ':'))} expects {list(want.shape)}")


def _ints(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _ints(v)
    elif isinstance(value, list):
        for v in value:
            yield from _ints(v)


def _meta_model(arch: str, config, path: Path, shapes: dict[str, tuple[int, ...]]):
    """The generator built on the meta device: its state_dict shapes cost no memory whatever `config` says.

    Building still takes time per layer, so no number in the config may exceed everything the file holds
    (its largest dimension, its tensor count): a genuine config's widths are dimensions and its counts are
    at most the number of tensors.
    """
    import torch

    from instyle import models

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: bad model config (a JSON {type(config).__name__}, not an object)")
    bound = max([256, len(shapes), *(d for shape in shapes.values() for d in shape)])
    for key, value in config.items():
        if any(n > bound for n in _ints(value)):
            raise CheckpointError(f"{path}: bad model config ({key}={json.dumps(value)[:60]} is larger than "
                                  f"anything the file's {len(shapes)} tensors hold)")
    try:
        with torch.device("meta"):
            return models.build(arch, config)
    except (ValueError, TypeError, OverflowError, RuntimeError) as e:
        raise CheckpointError(f"{path}: bad model config ({_first_line(e)})") from None


def _check_tensor(k: str, v, want, path: Path) -> None:
    """A plain, finite tensor of a dtype the model can take."""
    import torch

    if want.is_floating_point() and not (v.is_floating_point() or v.dtype in (torch.int8, torch.uint8, torch.int16,
                                                                                   torch.int32, torch.int64)):
        raise CheckpointError(f"{path}: {k}: dtype {v.dtype} where {want.dtype} is expected")
    need = v.numel() * v.element_size()
    if v.numel() and v.untyped_storage().nbytes() < need:
        raise CheckpointError(f"{path}: {k}: {list(v.shape)} tensor backed by only {v.untyped_storage().nbytes()} "
                              f"bytes (overlapping strides); not a plain tensor")
    if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).sum())
        raise CheckpointError(f"{path}: {k}: {bad} non-finite value(s) (NaN/Inf); the file is damaged or the "
                              f"training diverged")


def load(path: str | os.PathLike, *, device="cpu"):
    """Build the generator stored in `path` (.safetensors or pytorch/examples .pth); returns (model, metadata).

    Cheap whatever the file claims: the architecture is built on the meta device and every tensor's shape is
    checked against it before any weight is allocated; the weights are then assigned, not copied.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        header = _read_header(path)
        meta = dict(header.get("__metadata__", {}))
        if meta.get("instyle.format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: not an instyle checkpoint (metadata instyle.format missing or not "
                                  f"{FORMAT_VERSION!r})")
        try:
            config = json.loads(meta["config"])
        except (KeyError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: damaged checkpoint (metadata config: {_first_line(e)})") from None
        arch = meta.get("arch", "")
        shapes = _safetensors_shapes(header, path)
        skeleton = _meta_model(arch, config, path, shapes)
        expected = skeleton.state_dict()
        _check_shapes(expected, shapes, path, arch, config)
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # SafetensorError, or OSError/ValueError on a damaged file
            raise CheckpointError(f"{path}: damaged checkpoint ({_first_line(e)})") from None
    else:
        state = _load_pth(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        arch, config = "johnson", _infer_johnson_config(shapes, path)
        meta = {"instyle.format": FORMAT_VERSION, "arch": arch, "config": json.dumps(config),
                "style": path.stem, "training": json.dumps({"imported_from": path.name})}
        skeleton = _meta_model(arch, config, path, shapes)
        expected = skeleton.state_dict()
        _check_shapes(expected, shapes, path, arch, config)
    for k, v in state.items():
        _check_tensor(k, v, expected[k], path)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    try:
        skeleton.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the {arch} architecture ({_first_line(e, 200)})") from None
    leftover = [n for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"{path}: {leftover[0]}: not in the file and not derivable from the config")
    return skeleton.to(device).eval(), meta


def style_entries(meta: dict[str, str]) -> list[dict]:
    """One {"name", "source"} per style of a checkpoint's metadata: the `styles` list, else the one `style`."""
    if meta.get("styles"):
        try:
            entries = json.loads(meta["styles"])
            return [{"name": str(s["name"]), "source": str(s.get("source", ""))} for s in entries]
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"bad 'styles' metadata ({e})") from None
    return [{"name": meta.get("style") or "style", "source": ""}]


def style_names(meta: dict[str, str]) -> list[str]:
    """The style names of a checkpoint's metadata, in row order."""
    return [e["name"] for e in style_entries(meta)]


def shipped() -> dict[str, Path]:
    """Model files shipped in instyle/zoo/, in their listed order (first is the default)."""
    order_file = ZOO_DIR / "index.json"
    found = {p.stem: p for p in sorted(ZOO_DIR.glob("*.safetensors"))}
    if order_file.is_file():
        order = [n for n in json.loads(order_file.read_text()).get("order", []) if n in found]
        found = {n: found[n] for n in order + [n for n in found if n not in order]}
    return found


# Shipped file stems: the full network (the default) and its slim twin, distilled from it (3.6x fewer FLOPs per
# pixel, the same styles in the same rows), which `auto` runs on a CPU without AMX (engine/stylizer.py: load).
FULL_ZOO, SLIM_ZOO = "styles", "slim"


def slim_twin(path: Path) -> Path | None:
    """The shipped slim zoo when `path` is the shipped full zoo and the slim one holds the same styles in the same
    order (so any style, index or mix means the same there); else None."""
    zoo = shipped()
    full, slim = zoo.get(FULL_ZOO), zoo.get(SLIM_ZOO)
    if full is None or slim is None or Path(path).resolve() != full.resolve():
        return None
    return slim if style_names(read_metadata(slim)) == style_names(read_metadata(full)) else None


def shipped_styles() -> dict[str, tuple[Path, int]]:
    """Every shipped style by name -> (file, its row in that file), styles inside multi-style files
    included, in order (the first is the default). Reads headers only."""
    styles: dict[str, tuple[Path, int]] = {}
    for path in shipped().values():
        for i, name in enumerate(style_names(read_metadata(path))):
            styles.setdefault(name, (path, i))
    return styles


def resolve_style(model: str | os.PathLike | None) -> tuple[Path, str | None]:
    """A shipped style name, a shipped file's name or a path -> (file, the style named, or None).

    None -> the default: the first shipped file (and its first style)."""
    zoo = shipped()
    if model is None:
        if not zoo:
            raise CheckpointError("no model given and no shipped styles: pass --model PATH "
                                  "(a .safetensors or pytorch/examples .pth file)")
        return next(iter(zoo.values())), None
    text = str(model)
    styles = shipped_styles()
    if text in styles:
        return styles[text][0], text
    if text in zoo:
        return zoo[text], None
    path = Path(text).expanduser()
    if path.exists():
        return path, None
    known = f" (shipped: {', '.join(styles)})" if styles else ""
    raise CheckpointError(f"{text}: no such model file or shipped style{known}")


def resolve(model: str | os.PathLike | None) -> Path:
    """A model name (shipped style or file) or path -> file path; None -> the default shipped file."""
    return resolve_style(model)[0]
