"""Backend "fused": the whole JohnsonNet as a chain of fused conv-IN kernels (kernels/conv_in_gemm.py),
built from the net's own step list (models/graph.py) like the other runners.

Each of the net's convs is one kernel launch that reads its raw input once, applies the previous IN
(+ReLU, +skip) while loading, and writes its raw output once with the next IN's partial statistics;
between launches two Triton launches (kernels/stats_finalize.py) finalize those statistics into
(mean, gamma*rstd, beta).
No padded or upsampled activation is ever written; normalized ones only where they must exist (the
residual stream x_k, which the next block's conv1 stores as a by-product of its center tap) or where
re-normalizing per load would cost more than one extra pass (the deconvs' inputs, see below).

Deliberate choices:
  * weights are packed once, here, into the GEMM layout [KH*KW*Cin, Cout] in the run dtype;
  * the previous IN is applied in the conv's prologue for the 3x3 convs, but in one separate pass for
    layers whose input elements are loaded 36-81 times (see PRENORM_MIN_REUSE);
  * deconv3 (Cout 3) packs 5 horizontally adjacent output pixels x 3 channels into the GEMM's N
    (kernels/conv_in_gemm.py, PIX), so its tensor-core work is ~1.5x the useful FLOPs instead of 8/3x;
  * biases of convs followed by IN are dropped: IN subtracts the per-channel mean, so IN(conv + b) ==
    IN(conv) exactly, and the epilogue skips an add; only deconv3 keeps its bias;
  * activations between layers are channels_last (NHWC) in the run dtype; conv1 reads the NCHW fp32
    image in place and deconv3 writes the NCHW fp32 output directly (the kernels take any strides);
  * on CUDA, one CUDA graph per input shape (N, H, W), in a small LRU dict: the chain is 16 conv
    launches plus ~8 small statistics ops after each, ~140 launches whose CPU-side latency (the
    autotuner's dispatch included) a graph replay removes (engine.graphs.GraphCache, as for the triton
    backend).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from instyle.errors import BackendUnavailable
from instyle.kernels import conv_in_gemm as ci
from instyle.kernels import conv_in_normalize as cn
from instyle.kernels import conv_tma
from instyle.models.graph import Step

# Normalize a layer's input in a separate pass (kernels/conv_in_normalize.py) rather than in the conv's
# prologue when each stored input element is loaded this many times or more (taps x upsampling area):
# deconv1/deconv2 (36) and deconv3 (81) by default; the 3x3 convs (9, or 9/4 at stride 2) keep the
# prologue. A modeled choice (see that file's docstring); bench/fused_layers --prenorm compares both.
PRENORM_MIN_REUSE = 36
PRENORM_MODES = ("auto", "all", "none")
# The RGB input layer's K order (kernels/conv_in_gemm.py): "flat" gathers k -> (ky, kx, c) per element from
# the image in place; "window" first copies the image padded, NHWC, in the run dtype and reads contiguous
# rows. Flat stays the default until a GPU profile (bench/fused_layers --first-layer) says otherwise.
FIRST_LAYER_MODES = ("flat", "window")
# The upsampling 3x3 convs (deconv1/deconv2): "direct" runs the 3x3 over the upsampled grid in the index
# math; "phase" as four 2x2 convs of the stored input, one per output pixel phase (kernels/upsample_phase.py,
# 2.25x fewer MMA FLOPs, four launches). Direct stays the default until a GPU run (bench/campaign/verify.py's
# upsample step) times both.
UPSAMPLE_MODES = ("direct", "phase")
# The residual blocks' 3x3 convs: "prologue" applies the pending IN while gathering each A tile (conv_in);
# "tma" writes the normalized input once, reflect-padded NHWC (in_apply(..., pad=1)), and reads it through
# tensor descriptors, one box per (tap, channel block) (kernels/conv_tma.py). Prologue stays the default until
# a GPU run (bench/campaign/verify.py's conv3x3 step) times both.
CONV3X3_MODES = ("prologue", "tma")



class Layer(NamedTuple):
    """One conv of the chain (a step of model.steps()), pre-packed, with the IN that follows it."""
    name: str
    weight: torch.Tensor            # packed [KH*KW*Cin, Cout], run dtype
    bias: Optional[torch.Tensor]    # fp32 [Cout], only where no IN follows
    kernel: int
    stride: int
    upsample: bool
    cin: int
    cout: int
    in_weight: Optional[torch.Tensor]  # fp32 gamma of the following IN
    in_bias: Optional[torch.Tensor]    # fp32 beta
    eps: float
    prenorm: bool                      # normalize the input in a separate pass, not in the prologue
    pix: int                           # output pixels per GEMM row (weights packed for it)
    stores_input: bool                 # the prologue also stores the normalized input (a later residual)
    adds_skip: bool                    # the input's pending value includes a residual
    window: bool = False               # reads a padded NHWC copy of its input in row windows (RGB layer)
    phase: bool = False                # an upsampling 3x3 run as four 2x2 phase convs (weight [4, 4*Cin, Cout])
    tma: bool = False                  # reads a normalized, padded copy of its input by TMA (kernels/conv_tma.py)


def check_supported(model: nn.Module) -> None:
    """Raise BackendUnavailable unless `model` is a JohnsonNet the chain implements."""
    if getattr(model, "arch", None) != "johnson":
        raise BackendUnavailable(f"backend 'fused' runs only the Johnson generator, not {type(model).__name__}")
    cfg = model.config
    wanted = dict(norm="instance", padding="reflect", upsampling="nearest")
    for key, value in wanted.items():
        if cfg.get(key) != value:
            raise BackendUnavailable(f"backend 'fused' needs {key}={value!r}, this model has {key}={cfg.get(key)!r} "
                                     "(use backend 'eager' or 'triton')")


def _check_modes(prenorm: str, first_layer: str, upsample: str = "direct", conv3x3: str = "prologue") -> None:
    if prenorm not in PRENORM_MODES:
        raise ValueError(f"prenorm must be one of {PRENORM_MODES}, got {prenorm!r}")
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER_MODES}, got {first_layer!r}")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
    if conv3x3 not in CONV3X3_MODES:
        raise ValueError(f"conv3x3 must be one of {CONV3X3_MODES}, got {conv3x3!r}")


def _check_chain(steps: list[Step]) -> None:
    """The chain runs a straight line of reflect-padded convs, each followed by IN (the last by nothing)."""
    for i, step in enumerate(steps, 1):
        last = i == len(steps)
        ok = (step.kind in ("conv", "upconv") and step.srcs == (i - 1,) and step.conv is not None
              and (step.instance_norm if not last else step.norm is None and not step.relu and step.residual is None))
        if not ok:
            raise BackendUnavailable(f"backend 'fused' cannot run step {step.name} ({step.kind}) of this generator")


def _layer(step: Step, dtype: torch.dtype, prenorm: str, stores_input: bool, adds_skip: bool,
           first_layer: str = "flat", upsample_mode: str = "direct", conv3x3: str = "prologue") -> Layer:
    conv, norm = step.conv, step.norm
    upsample = step.kind == "upconv"
    cout, cin, k, _ = conv.weight.shape
    window = (first_layer == "window" and step.srcs == (0,) and cin <= ci.WINDOW_C.value and step.stride == 1
              and not upsample)
    phase = upsample_mode == "phase" and upsample and k == 3
    # the stride-1 3x3 convs between normalized activations: the residual blocks' (conv3's output and on)
    tma = (conv3x3 == "tma" and k == 3 and step.stride == 1 and not upsample and step.srcs != (0,)
           and conv_tma.supports(cin, cout, dtype))
    # loads per stored input element: taps x upsampling area (a phase conv: 4 phases x 4 taps)
    reuse = 16 if phase else k * k * (4 if upsample else 1) / (step.stride * step.stride)
    pre = step.srcs != (0,) and (prenorm == "all" or (prenorm == "auto" and reuse >= PRENORM_MIN_REUSE))
    # deconv3 (Cout 3): 5 adjacent pixels x 3 channels fill a 16-wide MMA instead of 3 of 8 columns
    pix = 16 // cout if cout < 8 and norm is None and step.stride == 1 and not upsample else 1
    packed = (ci.pack_phase_weights(conv.weight, dtype) if phase
              else ci.pack_weight(conv.weight.float(), dtype, pix, window=window))
    return Layer(step.name, packed,
                 None if norm is not None else conv.bias.detach().float().contiguous(),
                 k, step.stride, upsample, cin, cout,
                 None if norm is None else norm.weight.detach().float().contiguous(),
                 None if norm is None else norm.bias.detach().float().contiguous(),
                 1e-5 if norm is None else float(norm.eps), pre and not tma, pix, stores_input, adds_skip, window,
                 phase, tma)


class FusedChain:
    """The generator's step list (models/graph.py) as fused conv-IN launches (no CUDA graphs; see
    `make_runner`).

    Activation i is kept pending as (raw conv output, its IN's params, ReLU?, residual to add): the next
    conv's prologue computes it while loading. Where a later step adds it as a residual, that prologue
    also stores it (the Johnson blocks' x_k, written by each block's conv1 from its center tap)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, prenorm: str = "auto", first_layer: str = "flat",
                 upsample: str = "direct", conv3x3: str = "prologue"):
        check_supported(model)
        _check_modes(prenorm, first_layer, upsample, conv3x3)
        self.dtype = dtype
        self.steps = model.steps()
        _check_chain(self.steps)
        self.residuals = {s.residual for s in self.steps if s.residual is not None}
        self._layers = [_layer(s, dtype, prenorm, stores_input=i - 1 in self.residuals,
                               adds_skip=i > 1 and self.steps[i - 2].residual is not None, first_layer=first_layer,
                               upsample_mode=upsample, conv3x3=conv3x3)
                        for i, s in enumerate(self.steps, 1)]

    def layers(self) -> list[Layer]:
        return list(self._layers)

    def _conv(self, layer: Layer, x, norm, *, relu, skip=None, skip_out=None, out=None, trace=None):
        """One fused layer; returns (raw output, the next prologue's [N, 3, C] norm params or None, the
        normalized input where the layer stores it: skip_out, or a view of the TMA layer's padded copy)."""
        if trace is not None:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        run = self._conv_tma if layer.tma else self._conv_gathered
        y, nxt, kept = run(layer, x, norm, relu=relu, skip=skip, skip_out=skip_out, out=out)
        if trace is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            trace.append((layer.name, start, end))
        return y, nxt, kept

    def _conv_tma(self, layer: Layer, x, norm, *, relu, skip, skip_out, out):
        """The pending IN applied once into a reflect-padded copy, read by TMA; a stored input is its interior."""
        assert skip_out is None
        p = layer.kernel // 2
        xp = cn.in_apply(x, norm, relu=relu, skip=skip, pad=p)
        y, stats = conv_tma.conv_tma(xp, layer.weight, layer.bias, kernel=layer.kernel,
                                     stats=layer.in_weight is not None, out=out)
        nxt = None if stats is None else cn.finalize(stats, layer.in_weight, layer.in_bias, layer.eps)
        return y, nxt, xp[:, :, p:-p, p:-p] if layer.stores_input else None

    def _conv_gathered(self, layer: Layer, x, norm, *, relu, skip, skip_out, out):
        """conv_in's gathered A tiles, the pending IN in the prologue or (prenorm) applied once before; a stored
        input is written to skip_out."""
        kept = skip_out
        if layer.prenorm and norm is not None:  # apply the pending IN once (into the next skip if wanted)
            x = cn.in_apply(x, norm, relu=relu, skip=skip, out=skip_out)
            norm, relu, skip, skip_out = None, False, None, None
        stats_wanted = layer.in_weight is not None
        if layer.phase:  # four phase launches; their statistics merge as four equal groups
            assert skip_out is None
            y, groups = ci.conv_in_phases(x, layer.weight, layer.bias, norm=norm, relu=relu, skip=skip,
                                          stats=stats_wanted, out=out)
            nxt = None if groups is None else cn.finalize_groups(groups, layer.in_weight, layer.in_bias, layer.eps)
        else:
            y, stats = ci.conv_in(x, layer.weight, layer.bias, kernel=layer.kernel, stride=layer.stride,
                                  upsample=layer.upsample, norm=norm, relu=relu, skip=skip, skip_out=skip_out,
                                  stats=stats_wanted, out=out, pix=layer.pix, window=layer.window)
            nxt = None if stats is None else cn.finalize(stats, layer.in_weight, layer.in_bias, layer.eps)
        return y, nxt, kept

    def __call__(self, x: torch.Tensor, trace: Optional[list] = None) -> torch.Tensor:
        """Padded N,3,H,W float 0..255 (H, W multiples of 4, >= 8) -> raw N,3,H,W fp32 output.

        trace (CUDA only): a list that receives (layer name, start event, end event) per launch.
        """
        N, _, H, W = x.shape
        assert H % 4 == 0 and W % 4 == 0 and min(H, W) >= 8, (H, W)
        stored: dict[int, torch.Tensor] = {}  # activations a later step adds, as the prologue stored them
        free: list[torch.Tensor] = []          # stores whose residual has been added: reused (ping-pong)
        a, norm, relu, skip = x, None, False, None  # activation 0, the image, pending as is
        for i, (step, layer) in enumerate(zip(self.steps, self._layers), 1):
            skip_out = None
            if layer.stores_input and not layer.tma:  # a TMA layer's store is a view of its padded copy
                skip_out = free.pop() if free and free[-1].shape == a.shape else torch.empty_like(a)
            out = torch.empty((N, 3, H, W), device=x.device, dtype=torch.float32) if i == len(self.steps) else None
            a, norm, kept = self._conv(layer, a, norm, relu=relu, skip=skip, skip_out=skip_out, out=out, trace=trace)
            if skip is not None and skip._base is None:  # views of padded copies are not reused
                free.append(skip)
            if kept is not None:
                stored[i - 1] = kept
            relu, skip = step.relu, None if step.residual is None else stored.pop(step.residual)
        return a


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype, *, prenorm: str = "auto",
                first_layer: str = "flat", upsample: str = "direct", conv3x3: str = "prologue"):
    """Backend factory (engine.backends, which CUDA-graphs it per shape on CUDA): the fused chain."""
    check_supported(model)
    _check_modes(prenorm, first_layer, upsample, conv3x3)  # argument errors first: they are the caller's on any device
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise BackendUnavailable(f"backend 'fused' supports fp32, fp16 and bf16, not {dtype}")
    device = torch.device(device)
    if device.type != "cuda" and not ci._INTERPRET:
        raise BackendUnavailable("backend 'fused' needs a CUDA device (or TRITON_INTERPRET=1 to run its Triton "
                                 "kernels in the CPU interpreter, slowly)")
    chain = FusedChain(model, dtype, prenorm, first_layer, upsample, conv3x3)
    return lambda x: chain(x.to(device))
