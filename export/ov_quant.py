"""int8 for the `openvino` backend: NNCF post-training quantization of the converted model, cached on disk.

The recipe (`Recipe`, a small dataclass whose fields key the cache) names the calibration set: `crops`
seeded random square crops of `side` pixels from the training photos (data/content/train), and the NNCF
settings. Quality is checked on photos the calibration never saw (data/content/demo): PSNR and max |Δ|
of the int8 output against the eager fp32 module; the gate (PSNR >= GATE_DB on every photo) is written
into the cached model's sidecar, and `auto` picks int8 only for a model whose entry passed it.

One network per model: a multi-style model runs with `style_weights` as an input, so it is quantized once, with
calibration crops spread over its styles (crop i runs style i mod S: every style's activations set the ranges),
and checked per style -- and on the even mix of all -- against its eager fp32 self. Nothing here quantizes
implicitly: `instyle quantize` (export/quantize_cli.py) fills the cache, `instyle quantize --ship` writes the model
shipped with the zoo (export/zoo_int8.py); the runner only reads them.

nncf is imported only to quantize (the `int8` extra); running a cached int8 model needs openvino alone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.metrics import psnr_db

from .int8_recipe import CHECK_SIDE, EVEN_MIX, GATE_DB, Recipe

HINT = "pip install 'instyle[int8]'"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _nncf():
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable(f"int8 quantization needs the package nncf ({HINT})") from None
    return nncf


def photos(folder: Path) -> list[Path]:
    found = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{folder}: no photos (.jpg/.png) for int8 calibration or checking")
    return found


def _array(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def calibration_set(recipe: Recipe, folder: Path,
                    progress: Callable[[Iterable], Iterable] = iter) -> list[np.ndarray]:
    """`recipe.crops` seeded crops (1,3,side,side float32 0..255) of the photos in `folder`."""
    rng = random.Random(recipe.seed)
    files = photos(folder)
    order = rng.sample(files, len(files))  # every photo once before any repeats
    out = []
    for i in progress(range(recipe.crops)):
        im = _array(order[i % len(order)])
        w, h = im.size
        s = min(w, h, 2 * recipe.side)  # a crop up to 2x the side, scaled down: content at a few scales
        s = rng.randint(min(s, recipe.side), s)
        x0, y0 = rng.randint(0, w - s), rng.randint(0, h - s)
        crop = im.crop((x0, y0, x0 + s, y0 + s)).resize((recipe.side, recipe.side))
        out.append(np.ascontiguousarray(np.asarray(crop, np.float32).transpose(2, 0, 1)[None]))
    return out


@contextlib.contextmanager
def _nncf_warnings_only():
    """NNCF logs every ignored node at INFO (~100 lines per style); its progress bars stay."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize(model: nn.Module, recipe: Recipe, folder: Path, progress: Callable[[Iterable], Iterable] = iter):
    """The model converted (fp32 graph) and quantized by NNCF with `recipe`'s calibration set: an ov.Model."""
    nncf = _nncf()
    from instyle.models.styles import style_count

    from .onnx import INPUT_NAME, STYLE_INPUT
    from .ov_runner import convert

    ov_model = convert(model, "int8")  # native MVN norms: fast in bf16, and fp32's two-pass form buys nothing here
    data = calibration_set(recipe, folder, progress)
    styles = style_count(model)
    if styles > 1:
        one_hot = np.eye(styles, dtype=np.float32)
        data = [{INPUT_NAME: x, STYLE_INPUT: one_hot[i % styles][None]} for i, x in enumerate(data)]
    norms = list(recipe.NORM_OPS) if recipe.float_norms else []
    ignored = nncf.IgnoredScope(names=float_convs(ov_model, recipe), types=norms, validate=False)
    preset = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[recipe.preset]
    with contextlib.redirect_stdout(sys.stderr), _nncf_warnings_only():  # stdout stays the report's
        return nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data), preset=preset,
                             fast_bias_correction=recipe.fast_bias_correction, ignored_scope=ignored)


def float_convs(ov_model, recipe: Recipe) -> list[str]:
    """The names of the convolutions `recipe` keeps in float (the first `float_head`, and/or the last)."""
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return convs[:recipe.float_head] + convs[recipe.float_head:][-1:] * recipe.ignore_last_conv


def check(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, files: list[Path],
          max_side: int = CHECK_SIDE) -> dict:
    """PSNR and max |Δ| of `run` against the eager fp32 `model` on `files` (each scaled to <= max_side, padded to
    the stride multiple): {"photos": [{"photo", "psnr_db", "max_abs"}], "min_psnr_db", "passed"}."""
    m = int(model.stride_multiple)
    rows = []
    for path in files:
        im = _array(path)
        scale = min(1.0, max_side / max(im.size))
        w, h = (max(m, round(d * scale) // m * m) for d in im.size)
        x = torch.from_numpy(np.asarray(im.resize((w, h)), np.float32).transpose(2, 0, 1)[None].copy())
        with torch.inference_mode():
            ref = model.float()(x).clamp(0, 255)
        got = run(x).clamp(0, 255)
        rows.append({"photo": path.name, "psnr_db": round(psnr_db(got, ref), 2),
                     "max_abs": round(float((got - ref).abs().max()), 2)})
    low = min(r["psnr_db"] for r in rows)
    return {"photos": rows, "min_psnr_db": low, "passed": bool(low >= GATE_DB), "gate_db": GATE_DB}




def gate(run: Callable[..., torch.Tensor], model: nn.Module, names: list[str], files: list[Path],
         max_side: int = CHECK_SIDE) -> dict:
    """`check` per style of `model` (run(x, style_weights) for a multi-style model) and on the even mix of all:
    {"styles": {name: check's report}, "min_psnr_db", "passed", "gate_db"}."""
    from instyle.models.styles import bake, style_count

    s = style_count(model)
    if s == 1:
        styles = {(names or [""])[0]: check(run, model, files, max_side)}
    else:
        rows = {name: torch.eye(s)[i] for i, name in enumerate(names)} | {EVEN_MIX: torch.full((s,), 1.0 / s)}
        styles = {name: check(lambda x, r=row: run(x, r[None].expand(x.shape[0], -1)), bake(model, row), files,
                              max_side) for name, row in rows.items()}
    low = min(r["min_psnr_db"] for r in styles.values())
    return {"styles": styles, "min_psnr_db": low, "passed": all(r["passed"] for r in styles.values()),
            "gate_db": GATE_DB}


def _quantized_and_gated(model, recipe, calibration, held_out, names, progress, max_side):
    from . import ov_runner as ov

    quantized = quantize(model, recipe, calibration, progress)
    return quantized, gate(ov.OpenVINORunner(quantized, "int8", []), model, names, held_out, max_side)


def build(model: nn.Module, recipe: Recipe, calibration: Path, held_out: list[Path], *, names: list[str] | None = None,
          progress: Callable[[Iterable], Iterable] = iter, force: bool = False,
          max_side: int = CHECK_SIDE) -> tuple[dict, bool]:
    """Quantize `model` (the network that runs: one style, or all styles of a multi-style one), check it and cache
    it with its report (see `gate`): (report, cache hit). A valid cached entry with a report is a hit and is not
    rebuilt unless `force`."""
    from . import ov_runner as ov

    entry = None if force else ov.int8_entry(model, recipe)
    if entry and "styles" in entry.get("gate", {}):
        return entry["gate"], True
    quantized, report = _quantized_and_gated(model, recipe, calibration, held_out, names, progress, max_side)
    ov._write_cache(quantized, ov.entry_path(model, "int8", recipe), "int8",
                    {"recipe": dataclasses.asdict(recipe), "gate": report})
    return report, False


def ship(zoo_file: Path, recipe: Recipe, calibration: Path, held_out: list[Path], *,
         progress: Callable[[Iterable], Iterable] = iter, max_side: int = CHECK_SIDE) -> dict:
    """Quantize and gate the network of a shipped zoo file and write it beside the file (export/zoo_int8.py), with
    what it was built from. Returns the sidecar; its gate says whether `auto` will run it."""
    import time

    import openvino

    from instyle import checkpoint
    from instyle.version import __version__

    from . import zoo_int8
    from .cache import weights_digest

    start = time.perf_counter()
    model, meta = checkpoint.load(zoo_file)
    model = model.float().eval()
    names = checkpoint.style_names(meta)
    quantized, report = _quantized_and_gated(model, recipe, calibration, held_out, names, progress, max_side)
    return zoo_int8.write(zoo_file, quantized, {
        "weights_digest": weights_digest(model), "recipe": dataclasses.asdict(recipe),
        "calibration": {"folder": calibration.name, "photos": len(photos(calibration))},
        "held_out": [p.name for p in held_out], "check_side": max_side,
        "versions": {"openvino": openvino.get_version(), "nncf": _nncf().__version__, "torch": torch.__version__,
                     "instyle": __version__},
        "build_s": round(time.perf_counter() - start, 1), "gate": report}).meta
