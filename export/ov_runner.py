"""The `openvino` backend: the generator converted to OpenVINO and compiled for the CPU, cached on disk.

Conversion: `openvino.convert_model` straight from the PyTorch module (no ONNX, so no onnx/onnxscript
install is needed), input `image` with dynamic N/H/W, output `stylized`, the names of the export contract.
A multi-style model keeps its second input `style_weights` (N x S): one network per model serves every
style, mix and per-sample mix.
The engine pads to the stride multiple before calling the runner and crops/clamps after, as for every backend.

Precision: fp32 or bf16 through the CPU plugin's INFERENCE_PRECISION_HINT ("f32" is always set
explicitly: on a CPU with BF16 the plugin's own default is bf16). bf16 runs only where the CPU reports
the BF16 optimization capability (AVX512-BF16 or AMX); elsewhere a bf16 request runs fp32 and the runner
says so in `notes`. fp16 is refused: the CPU plugin would not run it as fp16 on these CPUs, and calling
an fp32 or bf16 run "fp16" would be a lie. Threads: one per physical core.

Cache: the converted graph is written as OpenVINO IR (.xml + .bin, weights as they are) into
$INSTYLE_CACHE/openvino/ (export/cache.py), named by the model hash + precision + OpenVINO version, with a JSON
sidecar holding both files' sha256. A second process verifies the sidecar and reads the IR: no PyTorch tracing
and no conversion (most of the setup time). Our own key rather than OpenVINO's CACHE_DIR: CACHE_DIR keys by
hashing an ov.Model or a model file, so a second process would still have to trace and convert the module first.
An entry that fails its check or its read is deleted and rebuilt once; an unwritable cache means running uncached.
Both are reported in `notes`, not raised.

Shapes: the graph keeps dynamic N/H/W, and the runner compiles it per input shape, static (OpenVINORunner:
why, and what it costs).

int8 runs only what was quantized ahead of time: the model shipped with the zoo (export/zoo_int8.py), or what
`instyle quantize` put in the cache (export/ov_quant.py); neither needs nncf to run.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instyle.atomic import atomic_path
from instyle.errors import BackendUnavailable
from instyle.precision import name_of

from . import zoo_int8
from .cache import cache_dir, model_key, sha256_file, why
from .int8_recipe import Recipe
from .onnx import INPUT_NAME, OUTPUT_NAME, STYLE_INPUT, check_exportable

PRECISIONS = ("fp32", "bf16", "int8")
_HINT = {"fp32": "f32", "bf16": "bf16"}
_TYPE_NAME = {"fp32": "'float32'", "bf16": "'bfloat16'"}  # as str(ov.Type) spells them
NO_INT8 = "no quantized model of this network in the cache (build it with `instyle quantize --model M`)"
CACHE_FORMAT = "3"  # bump when the converted graph changes for the same weights (invalidates caches)
HINT = "pip install openvino"
SHAPES = 8  # input shapes kept compiled per runner (each ~0.3 s to compile)
SHAPE_PIXELS = 2 * 3840 * 2160  # and at most this many image pixels among them: each compiled shape holds its
#                                 activations (the slim int8 network: ~620 MB per 2048² shape, measured)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"backend 'openvino' needs the package openvino ({HINT})") from None
    return openvino


@functools.cache
def _core():
    return _openvino().Core()


def cpu_capabilities() -> tuple[str, ...]:
    return tuple(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_supported() -> bool:
    """True where OpenVINO's CPU plugin reports BF16 (AVX512-BF16 or AMX) on this CPU."""
    return "BF16" in cpu_capabilities()


def auto_precision(device: torch.device, model: nn.Module | None = None) -> tuple[str, list[str]]:
    """(precision, notes) for precision="auto": int8 where a quantized form of `model` (the network that runs) passed
    its quality gate -- the one shipped with the zoo, on a CPU with int8 dot products (VNNI/AMX), or the one
    `instyle quantize` cached; for a multi-style network, where it passed for some of its styles (the others then run
    float: export/ov_per_style.py) -- else bf16 where the CPU has BF16, else fp32. Never quantizes."""
    from instyle.models.styles import style_count

    from .ov_per_style import gate_verdicts

    def usable(gate: dict | None) -> bool:
        verdicts = gate_verdicts(gate, style_count(model))
        return bool(gate) and (gate.get("passed") or any(ok for _, ok, _ in verdicts or ()))

    notes: list[str] = []
    try:
        if model is not None:
            if has_int8_dot():
                shipped, note = zoo_int8.find(model, failed_gate_ok=True)
                if shipped is not None and usable(shipped.meta.get("gate")):
                    return "int8", notes
                notes += [note] if note else []
            if usable((int8_entry(model) or {}).get("gate")):
                return "int8", notes
        return ("bf16" if bf16_supported() else "fp32"), notes
    except Exception:  # noqa: BLE001 -- no openvino: the factory will say so with the install hint
        return "fp32", notes


def has_int8_dot() -> bool:
    from instyle.cpu import has_int8_dot as dot

    return dot()


def _float_hint(precision: str) -> str:
    """The plugin's precision for ops left unquantized: int8 graphs run those in bf16 where the CPU has it."""
    if precision == "int8":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def threads() -> int:
    from .ort_runner import physical_cores

    return physical_cores()


def compile_config(precision: str, n_threads: int) -> dict:
    return {"INFERENCE_PRECISION_HINT": _HINT[_float_hint(precision)], "INFERENCE_NUM_THREADS": n_threads,
            "PERFORMANCE_HINT": "LATENCY"}


@contextlib.contextmanager
def _quiet():
    """convert_model traces with TorchScript: silence its tracer warnings for one conversion."""
    logger = logging.getLogger("torch")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def _two_pass(x: torch.Tensor, eps: float) -> torch.Tensor:
    centred = x - x.mean((2, 3), keepdim=True)
    return centred * torch.rsqrt((centred * centred).mean((2, 3), keepdim=True) + eps)


class TwoPassInstanceNorm(nn.Module):
    """Instance norm with the variance taken of the centred input (two passes), for the fp32 graph.

    OpenVINO's CPU MVN (what nn.InstanceNorm2d converts to) loses fp32 accuracy on large planes: on a
    1024x1024 photo its output was 0.08 (0..255 scale) away from a float64 run, eager PyTorch 7e-4; this
    explicit form brings it to 7e-4. bf16 keeps the native MVN: it is faster there and bf16 rounding
    dominates the error anyway (same PSNR).
    """

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps = norm.eps
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach()[None, :, None, None])
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach()[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _two_pass(x, self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y


class TwoPassConditionalNorm(nn.Module):
    """The same two-pass form for conditional instance norm: (gamma, beta) mixed per sample from style_weights."""

    conditional = True  # models/norm.py apply_norm passes the style weights

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps, self.styles = norm.eps, norm.styles
        self.weight, self.bias = nn.Parameter(norm.weight.detach()), nn.Parameter(norm.bias.detach())

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        gamma, beta = style_weights @ self.weight, style_weights @ self.bias
        return _two_pass(x, self.eps) * gamma[:, :, None, None] + beta[:, :, None, None]


def _two_pass_norms(gen: nn.Module) -> nn.Module:
    from instyle.models.norm import ConditionalInstanceNorm2d

    for name, module in list(gen.named_modules()):
        if isinstance(module, ConditionalInstanceNorm2d):
            two_pass = TwoPassConditionalNorm(module)
        elif isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats:
            two_pass = TwoPassInstanceNorm(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(gen.get_submodule(parent) if parent else gen, child, two_pass)
    return gen


def convert(model: nn.Module, precision: str = "fp32"):
    """The generator as an ov.Model: input `image` (f32, [?,3,?,?]) -> output `stylized`; a multi-style generator
    also takes `style_weights` (f32, [?,S])."""
    from instyle.models.styles import style_count

    ov = _openvino()
    gen = copy.deepcopy(model).float().cpu().eval()
    if precision == "fp32":
        gen = _two_pass_norms(gen)
    m, lo = int(model.stride_multiple), int(model.min_size)
    side = max(lo, 2 * m)
    example = torch.rand(2, 3, side + m, side + 2 * m, generator=torch.Generator().manual_seed(0)) * 255
    styles = style_count(model)
    shapes = [ov.PartialShape([-1, 3, -1, -1])]
    if styles > 1:  # two samples, two different mixes: nothing in the trace may treat the style as fixed
        example = (example, torch.softmax(torch.arange(2 * styles, dtype=torch.float32).view(2, styles), 1))
        shapes.append(ov.PartialShape([-1, styles]))
    with _quiet(), torch.no_grad():
        ov_model = ov.convert_model(gen, example_input=example, input=shapes)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    if styles > 1:
        ov_model.inputs[1].get_tensor().set_names({STYLE_INPUT})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def entry_path(model: nn.Module, precision: str, recipe=None, **extra) -> Path:
    """The cache entry (IR .xml; its .bin and .json sidecar beside it); int8 entries are keyed by the calibration
    recipe (and the nncf version) too."""
    from instyle.version import __version__

    ov = _openvino()
    if precision == "int8" and not extra:
        extra = {"recipe": (recipe or Recipe()).key()}
    key = model_key(model, precision=precision, openvino=ov.get_version(), format=CACHE_FORMAT, instyle=__version__,
                    **extra)
    return cache_dir("openvino") / f"{getattr(model, 'arch', 'model')}-{precision}-{key}.xml"


def _files(xml: Path) -> tuple[Path, Path, Path]:
    """(IR graph, IR weights, sidecar) of a cache entry."""
    return xml, xml.with_suffix(".bin"), xml.with_suffix(".json")


def _sidecar(xml: Path) -> Path:
    return _files(xml)[2]


def _read_cached(xml: Path):
    """The ov.Model of the entry `xml`, after checking both files against its sidecar; raises on any mismatch."""
    _, bin_, side = _files(xml)
    meta = json.loads(side.read_text())
    for path, field in ((xml, "xml_sha256"), (bin_, "bin_sha256")):
        if sha256_file(path) != meta[field]:
            raise ValueError(f"{path.name}: sha256 differs from its sidecar (truncated or corrupt)")
    return _core().read_model(str(xml))


def _write_cache(graph, xml: Path, precision: str, extra: dict | None = None) -> None:
    """Save the ov.Model as IR (float weights kept as they are), then its sidecar: a reader never sees a half entry."""
    ov = _openvino()
    _, bin_, side = _files(xml)
    tmp_xml = xml.with_name(f".{xml.stem}.tmp.xml")  # save_model writes the .bin beside the .xml it is given
    ov.save_model(graph, str(tmp_xml), compress_to_fp16=False)
    tmp_xml.with_suffix(".bin").replace(bin_)
    tmp_xml.replace(xml)  # the xml names its weights by offset, not by file name: renaming both is safe
    meta = {"xml_sha256": sha256_file(xml), "bin_sha256": sha256_file(bin_), "openvino": ov.get_version(),
            "precision": precision, **(extra or {})}
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def _forget(xml: Path) -> None:
    for p in _files(xml):
        with contextlib.suppress(OSError):
            p.unlink()


def graph_of(model: nn.Module, precision: str, *, use_cache: bool = True, build=None,
             key: dict | None = None):
    """(ov.Model, notes): from the disk cache when a valid entry exists, else `build()` (an ov.Model; default: the
    converted module), written to the cache when it is writable. `key`: more of the entry's key."""
    notes: list[str] = []
    xml = entry_path(model, precision, **(key or {})) if use_cache else None
    if xml is not None:
        try:
            present = xml.is_file()
        except OSError as e:
            present, xml = False, None
            notes.append(f"cache unreadable ({why(e)}): running without a cache")
        if present:
            try:
                return _read_cached(xml), notes
            except Exception as e:  # noqa: BLE001 -- any unusable entry is rebuilt once
                notes.append(f"cached {xml.name} was unusable ({why(e)}): rebuilt it")
                _forget(xml)
    try:
        graph = build() if build is not None else convert(model, precision)
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 -- a failed conversion: the backend cannot run
        raise BackendUnavailable(f"backend 'openvino': conversion failed ({why(e)})") from None
    if xml is not None:
        try:
            _write_cache(graph, xml, precision)
        except Exception as e:  # noqa: BLE001 -- read-only or full disk: run from memory
            _forget(xml)
            notes.append(f"cannot write the cache in {xml.parent} ({why(e)}): running without a cache")
    return graph, notes


def _no_int8():
    raise BackendUnavailable(f"backend 'openvino' int8: {NO_INT8}")


def int8_entry(model: nn.Module, recipe: Recipe | None = None) -> dict | None:
    """The sidecar of `model`'s cached int8 entry (its quality report under "gate"), None when there is none."""
    sidecar = _sidecar(entry_path(model, "int8", recipe))
    try:
        return json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except (OSError, ValueError):
        return None


class OpenVINORunner:
    """Runs an ov.Model on CPU tensors: padded image N,3,H,W float32 0..255 -> raw generator output.

    Compiled per input shape, static (an LRU of `shapes`, holding at most `pixels` image pixels, since each
    compiled shape keeps its activations allocated): with dynamic N/H/W the CPU plugin reorders every
    instance norm's output between layouts around the per-sample (gamma, beta) multiply and fuses no subgraphs --
    the slim zoo's shipped int8 network took 613 ms at 1024² dynamic, 319 ms static on the 2-vCPU Xeon
    (bench/results/2026-12-07-intel-xeon-int8-per-style/profile-*.json). A new shape costs one compilation
    (~0.3 s), about what the dynamic model's first call of a shape spent compiling kernels."""

    def __init__(self, graph, precision: str, notes: list[str], shapes: int = SHAPES, pixels: int = SHAPE_PIXELS):
        self.graph = graph
        self.precision = precision
        self.notes = notes
        self.shapes, self.pixels = shapes, pixels
        self._requests: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # key -> (request, its pixels)
        self.compiled_shapes = 0  # compilations so far (tests; a server's warm-up)

    def inputs(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """The request's inputs: the image, and a multi-style model's N x S style weights."""
        feed = {INPUT_NAME: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        if style_weights is not None:
            feed[STYLE_INPUT] = style_weights.detach().to("cpu", torch.float32).contiguous().numpy()
        return feed

    def request(self, shapes: dict[str, tuple]) -> object:
        """The infer request compiled for these input shapes (compiled now if new; the least recent one dropped)."""
        key = tuple(sorted(shapes.items()))
        if key in self._requests:
            self._requests.move_to_end(key)
            return self._requests[key][0]
        graph = self.graph.clone()
        graph.reshape({name: list(shape) for name, shape in shapes.items()})
        compiled = _core().compile_model(graph, "CPU", compile_config(self.precision, threads()))
        got = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        if _TYPE_NAME[_float_hint(self.precision)] not in got:
            raise BackendUnavailable(f"backend 'openvino': the compiled model runs {got}, not {self.precision}")
        self.compiled_shapes += 1
        image = shapes[INPUT_NAME]
        pixels = int(image[0]) * int(image[2]) * int(image[3])
        # each compiled shape holds its activations: few large ones, or more small ones (the newest always stays)
        while self._requests and (len(self._requests) >= self.shapes or
                                  sum(p for _, p in self._requests.values()) + pixels > self.pixels):
            self._requests.popitem(last=False)
        self._requests[key] = (compiled.create_infer_request(), pixels)
        return self._requests[key][0]

    def __call__(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        feed = self.inputs(x, style_weights)
        out = self.request({k: v.shape for k, v in feed.items()}).infer(feed, share_inputs=True)
        return torch.from_numpy(out[OUTPUT_NAME])


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype, *, int8_styles: str = "all"):
    """Backend factory (engine/backends/). int8_styles (int8 of a multi-style network gated per style): "all" runs
    every style in int8, "passed" only the styles whose gate passed, the others in the float precision
    (export/ov_per_style.py; what `auto` asks for)."""
    _openvino()
    if torch.device(device).type != "cpu":
        raise BackendUnavailable("backend 'openvino' runs on the CPU (use triton or tensorrt on CUDA)")
    if int8_styles not in ("all", "passed"):
        raise ValueError(f"backend option int8_styles must be 'all' or 'passed', got {int8_styles!r}")
    precision = name_of(dtype)
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"backend 'openvino' runs fp32, bf16 or int8 on the CPU, not {precision or dtype} "
                                 "(fp16 is not a CPU inference precision there; use bf16 or fp32)")
    try:
        check_exportable(model)
    except ValueError as e:
        raise BackendUnavailable(f"backend 'openvino': {e}") from None
    notes = []
    if precision == "bf16" and not bf16_supported():
        precision = "fp32"
        notes.append("this CPU reports no BF16 capability: running fp32")
    build, key, gate = None, {}, None
    if precision == "int8":  # int8 runs only what was quantized ahead of time: shipped, else cached
        shipped, note = zoo_int8.find(model, failed_gate_ok=True)  # asked for by name: a failed gate is a note
        if shipped is not None:
            build, key = functools.partial(_core().read_model, str(shipped.xml)), {"use_cache": False}
            gate = shipped.meta.get("gate")
        else:
            build, note = _no_int8, None
            gate = (int8_entry(model) or {}).get("gate")
        from instyle.models.styles import style_count

        from .ov_per_style import PerStyleRunner, gate_verdicts, worth_splitting

        if int8_styles == "passed" and worth_splitting(gate, style_count(model)):
            floating = _float_hint("int8")
            return PerStyleRunner(
                lambda: _runner(model, "int8", build=build, **key),
                lambda: _runner(model, floating), floating, gate_verdicts(gate, style_count(model)),
                float(gate.get("gate_db", 40.0)), notes)
        notes += [note] if note else []
    return _runner(model, precision, notes, build=build, **key)


def _runner(model: nn.Module, precision: str, notes: list[str] | None = None, **how) -> OpenVINORunner:
    graph, cache_notes = graph_of(model, precision, **how)
    return OpenVINORunner(graph, precision, (notes or []) + cache_notes)
