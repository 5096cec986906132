"""Stylizer: one generator, one backend, one precision, on one device.

The public face of the engine (`instyle.load` returns one). It owns the tensor contract: any N,3,H,W
input (float 0..255 or uint8) comes back as float32 0..255 of the same shape; padding to the
generator's stride multiple and the final clamp happen here, once, for every backend.

It also decides between the backend's whole-image run and exact tiled inference (engine/tiled.py):
`tile="off"` never tiles, an int tiles with that side (image pixels), `"auto"` tiles when the estimated
memory of the whole-image run (memory.untiled_bytes) exceeds what is free on the device, and retries
tiled when the whole-image run still runs out of memory. Tiled runs use the generator's own PyTorch
convolutions and the engine's exact global-statistics normalization, whatever the backend.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.models.norm import resize_style_map
from instyle.models.styles import StyleError, bake, mix_weights, style_count
from instyle.precision import DTYPES, module_dtype
from instyle.specs import resolve_device

from . import backends, controls, memory, plan, regions, tiled
from .padding import crop, pad_to_multiple

PRECISIONS = DTYPES  # name -> dtype (instyle/precision.py)
MIN_TILE = 32
MIX_CACHE = 4  # per-sample mixes: baked networks kept per Stylizer


def parse_tile(tile) -> str | int:
    """"auto" | "off" | a tile side in pixels (int or digit string, >= MIN_TILE)."""
    if isinstance(tile, str) and tile.strip().isdigit():
        tile = int(tile)
    if tile in ("auto", "off"):
        return tile
    if isinstance(tile, int) and not isinstance(tile, bool) and tile >= MIN_TILE:
        return tile
    raise ValueError(f"tile must be 'auto', 'off' or a side in pixels >= {MIN_TILE}, got {tile!r}")


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator's failure (when the kernel refuses instead of overcommitting)."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


class Stylizer:
    """Style controls (docs/architecture.md, Public API): `style` (name or index) or `mix` ({name or index: weight})
    pick the style of a multi-style model: an input of the one runner of a style-input backend (engine/backends),
    else baked into a single-style copy that the backend runs;
    `strength`, `preserve_color` and `style_scale` act around the generator (engine/controls.py).
    `regions` (engine/regions.py: a label image and a style, mix or `none` per label, and/or a strength image)
    sets them per pixel instead; per call, `style_map` / `strength_map` tensors do the same.
    `set_style` changes the style later; the controls can also be passed per call. `options` are the
    backend's own keyword options (engine/backends TABLE, e.g. {"prenorm": "all"} for "fused")."""

    def __init__(self, model: nn.Module, *, backend: str = "eager", precision: str = "fp32",
                 device: str | torch.device = "cpu", metadata: dict | None = None, tile="auto",
                 style: str | int | None = None, mix: dict | None = None, strength: float = 1.0,
                 preserve_color: bool = False, style_scale: float = 1.0, options: dict | None = None,
                 regions: regions.Regions | None = None):
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} (choose from auto, {', '.join(PRECISIONS)})")
        controls.check(strength, style_scale)
        self.tile = parse_tile(tile)
        self.device = resolve_device(device)
        backends.check_device(backend, self.device)
        if precision != "auto":
            backends.check_precision(backend, precision)
        self.options = dict(options or {})
        backends.check_options(backend, self.options)
        self.backend = backend
        # "auto" is resolved in _build on the network that runs: openvino's int8 exists only for networks
        # quantized ahead of time, so one without runs the float precision instead of failing
        self.requested_precision = precision
        self.metadata = dict(metadata or {})
        self.strength, self.preserve_color, self.style_scale = float(strength), bool(preserve_color), float(style_scale)
        self.source = model if style_count(model) > 1 else None  # the multi-style model, kept for set_style
        self.style_names = self._names(model)
        # a backend with the style as an input builds one runner for the multi-style model, whatever the style
        spec = backends.TABLE.get(backend)
        self.style_input = self.source is not None and spec is not None and spec.style_input
        self._run = None
        self._mix_cache: OrderedDict[tuple, Stylizer] = OrderedDict()  # baked backends' per-sample mixes
        self._source_steps = None  # the multi-style model's plan, for tiled runs with a style map
        self._build(model, style, mix)
        self.set_regions(regions)

    def set_regions(self, value: regions.Regions | None) -> None:
        """Per-pixel controls applied to every call (None: off); StyleError for a style the model lacks."""
        if value is not None:
            value.vectors(self.style_names or ["style"])
        self.regions = value

    @property
    def takes_style_map(self) -> bool:
        """Whether the backend's runner takes a per-pixel style map (eager; onnxruntime through a second graph)."""
        return self.style_input and (self.backend == "eager" or bool(getattr(self._run, "style_map", False)))

    def _names(self, model: nn.Module) -> list[str]:
        """The metadata's style names when they fit the model; placeholders for an unnamed multi-style one."""
        from instyle.checkpoint import style_names

        names = style_names(self.metadata) if self.metadata else []
        count = style_count(model)
        if count > 1 and len(names) != count:
            return [f"style{i}" for i in range(count)]
        return names

    def _build(self, model: nn.Module, style=None, mix=None) -> None:
        """Pick the style; bake it into a single-style copy (tiling, and the backends without a style input);
        build the backend's runner -- for a style-input backend only once, on the multi-style model."""
        if self.source is not None:
            self.weights = mix_weights(self.style_names, mix if mix is not None else style)
            model = bake(self.source, self.weights)
            self.mix = {n: float(w) for n, w in zip(self.style_names, self.weights.tolist()) if w > 0}
        else:
            picked = list(mix) if mix is not None else [] if style is None else [style]
            own = (0, "0", *self.style_names[:1])
            if any(p not in own for p in picked):
                raise StyleError(f"this model holds one style ({', '.join(self.style_names) or 'unnamed'}); "
                                 f"style/mix cannot pick {', '.join(map(str, picked))}")
            self.mix = {self.style_names[0]: 1.0} if self.style_names else {}
            self.weights = None
        if self.style_input and self._run is not None:  # the style is the runner's input: nothing to rebuild
            self._set_model(model)
            self._follow_style()
            return
        self.precision, auto_notes = self.requested_precision, []
        if self.precision == "auto":  # decided on the network that runs
            self.precision, auto_notes = backends.auto_choice(self.backend, self.device,
                                                              self.source if self.style_input else model)
        self.dtype = module_dtype(self.precision)  # the module's (and tiling's) dtype; int8 keeps fp32
        self._backend_dtype = PRECISIONS[self.precision]  # what the backend is asked to run
        self.channels_last = self.device.type == "cuda" and backends.TABLE[self.backend].runs_module
        self._set_model(model)
        net = self._on_device(self.source) if self.style_input else self.model
        make = backends.factory(self.backend)
        options = self.options
        if self.requested_precision == "auto":  # e.g. openvino: int8 only for the styles whose gate passed
            options = {**dict(backends.TABLE[self.backend].auto_options), **options}
        self._run = make(net, self.device, self._backend_dtype, **options)
        # what the runner really does, where it differs from what was asked (e.g. bf16 on a CPU without BF16)
        self.precision = getattr(self._run, "precision", self.precision)
        self._auto_notes = auto_notes
        self.last_tile: int | None = None  # tile side of the last call (None: whole image)
        self._follow_style()

    def _follow_style(self) -> None:
        """Precision and notes for the current style: a runner that picks its network per style (openvino int8
        gated per style: export/ov_per_style.py) builds the one this style needs now, not at the first call."""
        run, per_style_note = self._run, None
        if hasattr(run, "precision_for") and self.weights is not None:
            run.prepare(self.weights)
            self.precision = run.precision_for(self.weights)
            per_style_note = run.note_for(self.weights)
        self.notes: list[str] = self._auto_notes + list(getattr(run, "notes", ())) + (
            [per_style_note] if per_style_note else [])

    def warm(self) -> None:
        """Build every network a request may use (a server before its first client)."""
        if hasattr(self._run, "prepare"):
            self._run.prepare(None)

    def _on_device(self, model: nn.Module) -> nn.Module:
        model = model.eval().to(self.device, self.dtype)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _set_model(self, model: nn.Module) -> None:
        """The single-style network of the current style: what tiling runs (and baked backends compile)."""
        self.model = self._on_device(model)
        self.stride_multiple = model.stride_multiple
        self.min_size = model.min_size
        self.steps = self._plan(self.model)
        if self.steps is None and isinstance(self.tile, int):
            raise ValueError(f"tiled inference needs a JohnsonNet or PyramidNet, got {type(model).__name__}")

    @staticmethod
    def _plan(model: nn.Module):
        try:
            return plan.build(model)
        except ValueError:
            return None  # a module without a plan: whole-image runs only

    def set_style(self, style: str | int | None = None, mix: dict | None = None) -> None:
        """Switch a multi-style model to another style or mix (a backend with the style as an input keeps its
        runner; the others build one for the new baked network)."""
        if self.source is None:
            self._build(self.model, style, mix)  # validates; a single style has nothing to switch to
            return
        self._build(self.source, style, mix)

    @property
    def style(self) -> str:
        """The style being applied: its name, or a mix written as name=weight,..."""
        if len(self.mix) == 1:
            return next(iter(self.mix))
        if self.mix:
            return ",".join(f"{n}={w:.3g}" for n, w in self.mix.items())
        return self.metadata.get("style", "")

    def _auto_tile(self, x: torch.Tensor) -> int:
        return memory.auto_tile(self.steps, tuple(x.shape), self.device, self.dtype.itemsize)

    def plan_tile(self, x: torch.Tensor) -> int | None:
        """The tile side a padded input will run with (None: whole image)."""
        if self.tile == "off" or self.steps is None:
            return None
        if isinstance(self.tile, int):
            return self.tile
        need = memory.untiled_bytes(self.steps, tuple(x.shape), self.dtype.itemsize)
        if need <= memory.HEADROOM * memory.available_bytes(self.device):
            return None
        return self._auto_tile(x)

    def _tiled(self, x: torch.Tensor, tile: int, style_weights: torch.Tensor | None = None,
               style_map: torch.Tensor | None = None) -> torch.Tensor:
        """Exact tiled inference of the baked network; per-sample mixes bake one network per distinct row; a
        style map runs the multi-style network's plan with per-pixel (gamma, beta)."""
        self.last_tile = tile
        if style_map is not None:
            if self._source_steps is None:  # its own copy: the source stays as baking needs it
                import copy

                src = self.source if self.style_input else copy.deepcopy(self.source)
                self._source_steps = self._plan(self._on_device(src))
            return tiled.run_tiled(self._source_steps, x, tile, dtype=self.dtype, channels_last=self.channels_last,
                                   style_map=style_map)
        if style_weights is None:
            return tiled.run_tiled(self.steps, x, tile, dtype=self.dtype, channels_last=self.channels_last)
        parts = {}
        for row in torch.unique(style_weights, dim=0):
            idx = (style_weights == row).all(1).nonzero().flatten().to(x.device)
            steps = self._plan(self._on_device(bake(self.source, row)))
            parts[idx] = tiled.run_tiled(steps, x[idx], tile, dtype=self.dtype, channels_last=self.channels_last)
        y = torch.empty(x.shape, dtype=next(iter(parts.values())).dtype, device=x.device)
        for idx, part in parts.items():
            y[idx] = part
        return y

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, *, strength: float | None = None, preserve_color: bool | None = None,
                 style_scale: float | None = None, style_weights: torch.Tensor | None = None,
                 style_map: torch.Tensor | None = None, strength_map: torch.Tensor | None = None) -> torch.Tensor:
        """N,3,H,W (float 0..255 or uint8, any device) -> float32 0..255 on the Stylizer's device.

        The controls default to the Stylizer's own (see the class docstring). style_weights (N x S, a
        multi-style model only): each sample its own mix. A backend with the style as an input runs the batch in
        one call of its one network; on the others, samples that share a mix run as one batch of a network
        with that mix baked in (a few of those are kept, MIX_CACHE). style_map / strength_map: per-pixel
        styles and strength (engine/regions.py; they replace the Stylizer's `regions` for this call); a
        strength map alone goes with style_weights (each sample its mix, each pixel its strength)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N,3,H,W tensor, got shape {tuple(x.shape)}")
        strength = self.strength if strength is None else float(strength)
        preserve = self.preserve_color if preserve_color is None else bool(preserve_color)
        scale = self.style_scale if style_scale is None else float(style_scale)
        controls.check(strength, scale)
        x = x.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        if style_map is None and strength_map is None and self.regions is not None:
            style_map, strength_map = self.regions.maps(self.style_names or ["style"], x.shape[0], h, w, self.device)
        pixel = None
        if style_map is not None or strength_map is not None:
            if style_weights is not None and style_map is not None:  # a strength map goes with any mix
                raise ValueError("style_weights and a style map exclude each other: a map sets each pixel's mix")
            to = dict(device=self.device)
            style_map, pixel = regions.split(None if style_map is None else style_map.to(**to),
                                             None if strength_map is None else strength_map.to(**to),
                                             max(1, len(self.style_names)), tuple(x.shape))
            if style_map is not None and regions.is_constant(style_map):
                style_weights, style_map = style_map[:, :, 0, 0], None  # one mix per sample: any backend runs it
            if style_map is not None and not self.takes_style_map and not isinstance(self.tile, int):
                # (an explicit tile side runs the PyTorch plan whatever the backend: it takes maps)
                raise BackendUnavailable(f"backend {self.backend!r} cannot take a per-pixel style map (regions "
                                         "with several styles); use --backend eager (or onnxruntime)")
        if strength == 0 or (pixel is not None and not bool(pixel.any())):
            return x.clone()
        xs = controls.resize(x, controls.scaled_size(h, w, scale)) if scale != 1 else x
        if style_map is not None:
            y = self._generate(xs, style_map=resize_style_map(style_map, tuple(xs.shape[-2:])))
        else:
            y = self._generate(xs) if style_weights is None else self._generate_per_sample(xs, style_weights)
        if scale != 1:
            y = controls.resize(y, (h, w))
        if preserve:
            y = controls.preserve_color(y, x)
        return controls.blend(y, x, strength if pixel is None else pixel * strength)

    def _generate_per_sample(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        if self.source is None:
            raise StyleError("per-sample style weights need a multi-style model; this one holds one style")
        n, s = x.shape[0], len(self.style_names)
        w = style_weights.detach().float().cpu()
        if w.shape != (n, s) or (w < 0).any() or not (w.sum(1) > 0).all():
            raise StyleError(f"style_weights must be N x S = {n} x {s}, >= 0, each row with a positive sum; "
                             f"got {tuple(w.shape)}")
        w = w / w.sum(1, keepdim=True)
        if self.style_input:
            return self._generate(x, w)
        y = torch.empty_like(x)
        for row in torch.unique(w, dim=0):
            idx = (w == row).all(1).nonzero().flatten().to(x.device)
            y[idx] = self._for_mix(row)._generate(x[idx])
        return y

    def _for_mix(self, row: torch.Tensor) -> "Stylizer":
        """A Stylizer of the same (baked) backend with the mix `row` baked in (LRU of MIX_CACHE)."""
        key = tuple(round(v, 6) for v in row.tolist())
        cache = self._mix_cache
        if key in cache:
            cache.move_to_end(key)
        else:
            if len(cache) >= MIX_CACHE:
                cache.popitem(last=False)
            cache[key] = Stylizer(self.source, backend=self.backend, precision=self.requested_precision,
                                  device=self.device, metadata=self.metadata, tile=self.tile, options=self.options,
                                  mix={i: v for i, v in enumerate(row.tolist()) if v > 0})
        return cache[key]

    def _generate(self, x: torch.Tensor, style_weights: torch.Tensor | None = None,
                  style_map: torch.Tensor | None = None) -> torch.Tensor:
        """The generator on x, padded and cropped back, clamped: float32 0..255. style_weights (N x S, normalized):
        per-sample mixes of a style-input backend; None: the Stylizer's style. style_map (N x S x H x W): per-pixel
        mixes, padded as the image is."""
        padded, size = pad_to_multiple(x, self.stride_multiple, self.min_size)
        del x
        if style_map is not None:
            style_map = pad_to_multiple(style_map, self.stride_multiple, self.min_size)[0]
        tile = self.plan_tile(padded)
        if tile is not None:
            y = self._tiled(padded, tile, style_weights, style_map)
        else:
            self.last_tile = None
            try:
                y = self._call(padded, style_weights if style_map is None else style_map)
            except Exception as e:  # noqa: BLE001 -- only out-of-memory errors are handled
                if not is_out_of_memory(e) or self.tile == "off" or self.steps is None:
                    raise
                oom = True
            else:
                oom = False
            if oom:  # outside the except block, so the failed run's tensors are freed first
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                y = self._tiled(padded, self._auto_tile(padded), style_weights, style_map)
        return crop(y, size).float().clamp_(0, 255)

    def _call(self, x: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
        """The runner on a padded batch; a style-input runner gets the N x S weights (the Stylizer's style's
        row for every sample when none are given)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.style_input:
            return self._run(x)
        if style_weights is None:
            style_weights = self.weights[None].expand(x.shape[0], -1)
        return self._run(x, style_weights.float().contiguous())

    def stylize_image(self, image):
        """PIL image in, PIL image out (EXIF orientation, ICC profile and alpha handled)."""
        from PIL import ImageOps

        from instyle import io

        pic = io.picture_from_pil(ImageOps.exif_transpose(image))
        out = self(io.to_tensor([pic]))[0]
        return io.picture_to_pil(io.Picture(io.rgb_from_tensor(out), pic.alpha, pic.icc_profile))


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(e, backends.BackendUnavailable):
        line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def load(model=None, backend: str = "auto", precision: str = "auto", device: str = "auto", *,
         tile="auto", report=None, style: str | int | None = None, mix: dict | None = None,
         options: dict | None = None, **kwargs) -> Stylizer:
    """A Stylizer for a shipped style name, a model file, or an nn.Module (see docs/architecture.md, Public API).

    backend "auto" tries `backends.chain(device)` in order -- on CUDA fused, triton, eager; on CPU openvino,
    onnxruntime, eager; with an explicit precision only those that run it -- and keeps the first that builds: any
    failure to build (a missing package, a failed conversion, an unusable cache) moves down the chain. It then
    writes one line to `report` (default: sys.stderr; False: nothing) naming the backend and precision that run
    and, where it moved down the chain, why; `Stylizer.choice` holds the same line. An explicit backend that cannot
    be built raises BackendUnavailable. precision "auto" = fp16 on CUDA; on CPU the backend's own choice (openvino:
    int8 where the model shipped with the zoo (on a CPU with VNNI/AMX) or one `instyle quantize` cached passed its
    gate, else bf16 where the CPU has BF16, else fp32), else fp32. tile: "auto" | "off" | side in pixels (see
    Stylizer). A shipped style's name picks that style inside its file; `style` or `mix` pick one of a
    multi-style file's styles (default: its first); other keyword arguments are the Stylizer's style controls.
    options: the backend's own keyword options (engine/backends TABLE); with backend "auto" each tried
    backend gets those it takes, and an option no backend of the chain takes is a ValueError.
    """
    from instyle import checkpoint

    dev = resolve_device(device)
    slim = None
    if isinstance(model, nn.Module):
        module, meta = model, {}
    else:
        path, named = checkpoint.resolve_style(model)
        if backend == "auto" and dev.type == "cpu" and (model is None or named is not None):
            slim = _slim_on_this_cpu(path)
            path = slim or path
        module, meta = checkpoint.load(path)
        if named is not None and style is None and mix is None:
            style = named
    common = dict(device=dev, metadata=meta, tile=tile, style=style, mix=mix, **kwargs)
    if backend != "auto":
        return Stylizer(module, backend=backend, precision=precision, options=options, **common)
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (choose from auto, {', '.join(PRECISIONS)})")
    parse_tile(tile)  # argument errors are the caller's, not a reason to move down the chain
    names = backends.chain(dev)
    if precision != "auto":  # only the backends that run it: an int8 request is openvino's, not eager's refusal
        names = [n for n in names if precision in backends.TABLE[n].precisions]
        if not names:
            raise ValueError(f"backend 'auto' on {dev.type}: no backend here runs {precision}")
    try:
        per_backend = backends.split_options(names, dict(options or {}))
    except ValueError as e:
        raise ValueError(f"backend 'auto' on {dev.type}: {e}") from None
    skipped = []
    for i, name in enumerate(names):
        try:
            # every try but the last gets its own copy: a failed build may have cast or changed the module
            stylizer = Stylizer(module if i == len(names) - 1 else _copy(module), backend=name,
                                precision=precision, options=per_backend[name], **common)
        except Exception as e:  # noqa: BLE001 -- whatever stops a backend from building moves down the chain
            if i == len(names) - 1 or isinstance(e, StyleError):  # a bad style is the caller's, like bad args
                raise
            skipped.append(f"{name}: {_first_line(e)}")
        else:
            break
    line = f"instyle: backend {stylizer.backend} {stylizer.precision}"
    if slim is not None:
        line += f" (slim zoo: this CPU has no AMX; --model {checkpoint.FULL_ZOO} runs the full network)"
    if skipped:
        line += " (skipped " + "; ".join(skipped) + ")"
    if stylizer.notes:
        line += " [" + "; ".join(stylizer.notes) + "]"
    stylizer.choice = line
    if report is not False:
        print(line, file=report or sys.stderr, flush=True)
    return stylizer


def _slim_on_this_cpu(path):
    """The shipped slim twin of the shipped full zoo `path` where the full network is too slow for a CPU default:
    without AMX (instyle/cpu.py), where even its int8 form lost to the peer's network at 1024² (bench/vs_peer.py;
    docs in README, Styles); None elsewhere or when no slim zoo is shipped."""
    from instyle import checkpoint
    from instyle.cpu import has_amx

    return None if has_amx() else checkpoint.slim_twin(path)


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)
