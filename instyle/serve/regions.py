"""Regions in POST /v1/stylize: the CLI's --mask/--regions/--strength-map/--feather as the multipart fields `mask`
and `strength_map` (files) and `regions` and `feather` (text), read by the CLI's own code (instyle/masks.py,
specs.parse_regions) into the engine's Regions (engine/regions.py; docs/regions.md). A bad one is BadUpload: 400
(413 past the pixel limit, read from the header) with one line that names the field.

A request with maps is a batch of its own: its batcher Key holds its maps, equal to no other request's key, and it
runs in the batcher's one worker thread like every other. Regions with several styles need a backend that takes a
per-pixel style map; where the serving one cannot (openvino, the CPU default), they run through an eager fp32
Stylizer of the same multi-style model, built on first use, in the worker thread, and kept. Everything else (a
strength map, one style plus `none`) is a per-pixel strength, which the serving backend runs itself.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from instyle.serve.uploads import BadUpload

FILES = ("mask", "strength_map")
TEXT = ("regions", "feather")
FIELDS = FILES + TEXT
MAX_FEATHER = 1000.0  # pixels, as the CLI's --feather
_FLAGS = {"mask": "--mask", "strength_map": "--strength-map"}


@dataclass(eq=False)  # compared by identity: a batcher Key holding one equals no other request's key
class Maps:
    regions: object  # engine.regions.Regions
    several_styles: bool  # a per-pixel style map, not only a strength


def parse(fields: dict[str, str], files: dict[str, tuple[bytes, str]], stylizer, *, max_pixels: int,
          notify) -> Maps | None:
    """The request's maps from its map `fields` (regions, feather: text; a mask or strength_map sent as text is
    refused) and `files` ({name: (bytes, file name)}); None without any. `notify` gets the lines the engine says
    when it resizes a map to the image. Style names are checked against the loaded model."""
    for name in FILES:
        if name in fields:
            raise BadUpload(400, f"{name}: send it as a file field of a multipart form (curl -F {name}=@{name}.png)")
    has_mask, regions_text = "mask" in files, fields.get("regions") or None
    feather = _feather(fields.get("feather"))
    if has_mask and not regions_text:
        raise BadUpload(400, "mask: needs a regions field saying what each mask value gets (e.g. regions="
                        "'0=none;255=candy')")
    if regions_text and not has_mask:
        raise BadUpload(400, "regions: names the values of a mask; send the mask as a file field")
    if feather and not has_mask:
        raise BadUpload(400, "feather: softens the edges of a mask; send one")
    if not files:
        return None
    if has_mask and (fields.get("style") or fields.get("mix")):
        raise BadUpload(400, "mask: sets each region's style: name the styles in regions, not in style or mix")
    return _read(files, regions_text, feather, stylizer, max_pixels, notify)


def _feather(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise BadUpload(400, f"feather: expected a number of pixels, got {text!r}") from None
    if not 0 <= value <= MAX_FEATHER:
        raise BadUpload(400, f"feather must be between 0 and {MAX_FEATHER:g} pixels, got {text}")
    return value


def _read(files, regions_text, feather, stylizer, max_pixels, notify) -> Maps:
    import torch

    from instyle import masks
    from instyle.engine.regions import Regions
    from instyle.models.styles import StyleError
    from instyle.serve.options import style_names
    from instyle.specs import parse_regions

    labels = strength = None
    mixes: tuple = ()
    if "mask" in files:
        try:
            spec = parse_regions(regions_text)
        except ValueError as e:
            raise BadUpload(400, str(e).replace("--regions", "regions")) from None
        labels, mixes = _file("mask", *files["mask"], max_pixels, lambda path: masks.read_mask(path, spec, max_pixels))
    if "strength_map" in files:
        strength = _file("strength_map", *files["strength_map"], max_pixels,
                         lambda path: masks.read_strength_map(path, max_pixels))
    regions = Regions(labels=None if labels is None else torch.from_numpy(labels), mixes=mixes,
                      strength=None if strength is None else torch.from_numpy(strength), feather=feather,
                      notify=notify, source=f"mask {files['mask'][1]}" if "mask" in files else "mask",
                      strength_source=f"strength_map {files['strength_map'][1]}" if "strength_map" in files
                      else "strength map")
    try:
        regions.vectors(style_names(stylizer))
    except StyleError as e:
        raise BadUpload(400, f"regions: {e}") from None
    return Maps(regions, stylizer.source is not None and masks.distinct_styles(mixes) > 1)


def _file(field: str, data: bytes, name: str, max_pixels: int, read):
    """read(path) of the upload spooled to a file, its pixels checked from the header first; the library's
    UsageError (which names the flag and the path) becomes a 400 naming the field and the upload."""
    from instyle import io
    from instyle.errors import UsageError

    if not data:
        raise BadUpload(400, f"{field} {name}: empty upload")
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="instyle-serve-") as folder:
        src = Path(folder) / (field + (suffix if suffix in io.IMAGE_EXTENSIONS else ""))
        src.write_bytes(data)

        def named(text: str) -> str:
            return text.replace(f"{_FLAGS[field]} {src}", f"{field} {name}").replace(str(src), name) \
                .replace("--regions", "regions")

        try:
            w, h = io.image_size(src)
        except io.ImageError as e:
            raise BadUpload(400, f"{field} {named(str(e))}") from None
        if w * h > max_pixels:  # from the header alone, as for the image
            raise BadUpload(413, f"{field} {name}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                            "(--max-pixels)")
        try:
            return read(src)
        except UsageError as e:
            raise BadUpload(400, named(str(e))) from None


class MapRunner:
    """Runs a request's maps in the worker thread: through the serving Stylizer, or, for several styles where it
    cannot take a per-pixel style map, through an eager fp32 one of the same model (slower; built once)."""

    def __init__(self, stylizer):
        self.stylizer = stylizer
        self.fallback = None

    def _for(self, maps: Maps):
        st = self.stylizer
        if not maps.several_styles or st.takes_style_map or isinstance(st.tile, int):  # a tile side runs maps
            return st
        if self.fallback is None:
            import copy

            from instyle.engine.stylizer import Stylizer

            # a copy: the serving backend may have cast the model in place (bf16)
            self.fallback = Stylizer(copy.deepcopy(st.source).float(), backend="eager", precision="fp32",
                                     device=st.device, metadata=st.metadata, tile=st.tile)
        return self.fallback

    def __call__(self, x, maps: Maps, weights, **controls):
        """x (1,3,H,W); weights: the request's style mix (1 x S) or None; kept only with a strength map alone,
        since a mask names each region's style."""
        from instyle.serve.options import style_names

        st = self._for(maps)
        style_map, strength_map = maps.regions.maps(style_names(st), x.shape[0], *x.shape[-2:], st.device)
        return st(x, style_map=style_map, strength_map=strength_map,
                  style_weights=weights if style_map is None else None, **controls)
