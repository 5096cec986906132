"""Backend "fused": the whole JohnsonNet as a chain of fused conv-IN kernels (kernels/conv_in_gemm.py).

Each of the net's convs is one kernel launch that reads its raw input once, applies the previous IN
(+ReLU, +skip) while loading, and writes its raw output once with the next IN's partial statistics;
between launches a few torch ops on [N, T, C] finalize those statistics into (mean, gamma*rstd, beta).
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
    autotuner's dispatch included) a graph replay removes. GPU-only code: engine.graphs.GraphCache, as for the triton backend.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .backends import BackendUnavailable
from .graphs import GraphCache

from instyle.kernels import conv_in_gemm as ci
from instyle.kernels import conv_in_normalize as cn

# Normalize a layer's input in a separate pass (kernels/conv_in_normalize.py) rather than in the conv's
# prologue when each stored input element is loaded this many times or more (taps x upsampling area):
# deconv1/deconv2 (36) and deconv3 (81) by default; the 3x3 convs (9, or 9/4 at stride 2) keep the
# prologue. A modeled choice (see that file's docstring); bench/fused_layers --prenorm compares both.
PRENORM_MIN_REUSE = 36
PRENORM_MODES = ("auto", "all", "none")

GRAPH_CACHE_SIZE = 4


class Layer(NamedTuple):
    """One conv of the chain, pre-packed, with the IN that follows it (None for deconv3)."""
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


def _layer(name: str, conv: nn.Conv2d, norm: Optional[nn.InstanceNorm2d], *, stride: int, upsample: bool,
           dtype: torch.dtype, prenorm: str = "auto") -> Layer:
    cout, cin, k, _ = conv.weight.shape
    reuse = k * k * (4 if upsample else 1) / (stride * stride)
    pre = name != "conv1" and (prenorm == "all" or (prenorm == "auto" and reuse >= PRENORM_MIN_REUSE))
    # deconv3 (Cout 3): 5 adjacent pixels x 3 channels fill a 16-wide MMA instead of 3 of 8 columns
    pix = 16 // cout if cout < 8 and norm is None and stride == 1 and not upsample else 1
    return Layer(name, ci.pack_weight(conv.weight.float(), dtype, pix),
                 None if norm is not None else conv.bias.detach().float().contiguous(),
                 k, stride, upsample, cin, cout,
                 None if norm is None else norm.weight.detach().float().contiguous(),
                 None if norm is None else norm.bias.detach().float().contiguous(),
                 1e-5 if norm is None else float(norm.eps), pre, pix)


class FusedChain:
    """The JohnsonNet forward pass as fused conv-IN launches (no CUDA graphs; see `make_runner`)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, prenorm: str = "auto"):
        check_supported(model)
        if prenorm not in PRENORM_MODES:
            raise ValueError(f"prenorm must be one of {PRENORM_MODES}, got {prenorm!r}")
        m = model
        self.dtype = dtype
        kw = dict(dtype=dtype, prenorm=prenorm)
        self.head = [
            _layer("conv1", m.conv1.conv2d, m.in1, stride=1, upsample=False, **kw),
            _layer("conv2", m.conv2.conv2d, m.in2, stride=2, upsample=False, **kw),
            _layer("conv3", m.conv3.conv2d, m.in3, stride=2, upsample=False, **kw),
        ]
        self.blocks = [
            (_layer(f"{r}.conv1", getattr(m, r).conv1.conv2d, getattr(m, r).in1, stride=1, upsample=False,
                    **kw),
             _layer(f"{r}.conv2", getattr(m, r).conv2.conv2d, getattr(m, r).in2, stride=1, upsample=False,
                    **kw))
            for r in m.res_names
        ]
        self.tail = [
            _layer("deconv1", m.deconv1.conv2d, m.in4, stride=1, upsample=True, **kw),
            _layer("deconv2", m.deconv2.conv2d, m.in5, stride=1, upsample=True, **kw),
            _layer("deconv3", m.deconv3.conv2d, None, stride=1, upsample=False, **kw),
        ]

    def layers(self) -> list[Layer]:
        return self.head + [c for pair in self.blocks for c in pair] + self.tail

    def _conv(self, layer: Layer, x, norm, *, relu, skip=None, skip_out=None, out=None, trace=None):
        """One fused launch; returns (raw output, the next prologue's [N, 3, C] norm params or None)."""
        if trace is not None:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        if layer.prenorm and norm is not None:  # apply the pending IN once (into the next skip if wanted)
            x = cn.in_apply(x, norm, relu=relu, skip=skip, out=skip_out)
            norm, relu, skip, skip_out = None, False, None, None
        y, stats = ci.conv_in(x, layer.weight, layer.bias, kernel=layer.kernel, stride=layer.stride,
                              upsample=layer.upsample, norm=norm, relu=relu, skip=skip, skip_out=skip_out,
                              stats=layer.in_weight is not None, out=out, pix=layer.pix)
        nxt = None if stats is None else cn.finalize(stats, layer.in_weight, layer.in_bias, layer.eps)
        if trace is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            trace.append((layer.name, start, end))
        return y, nxt

    def __call__(self, x: torch.Tensor, trace: Optional[list] = None) -> torch.Tensor:
        """Padded N,3,H,W float 0..255 (H, W multiples of 4, >= 8) -> raw N,3,H,W fp32 output.

        trace (CUDA only): a list that receives (layer name, start event, end event) per launch.
        """
        N, _, H, W = x.shape
        assert H % 4 == 0 and W % 4 == 0 and min(H, W) >= 8, (H, W)
        a, norm = self._conv(self.head[0], x, None, relu=False, trace=trace)         # raw conv1(image)
        for layer in self.head[1:]:                                                   # conv(relu(IN(a)))
            a, norm = self._conv(layer, a, norm, relu=True, trace=trace)
        # Residual stream: x_0 = relu(IN3(a3)); x_k = IN(r2_k) + x_{k-1}. Each is pending in (a, norm,
        # relu_in, skip) until the next conv's prologue computes it, and block conv1 stores it (ping-pong).
        skip, relu_in = None, True
        bufs = [torch.empty_like(a), torch.empty_like(a)] if self.blocks else []
        for i, (c1, c2) in enumerate(self.blocks):
            new_skip = bufs[i % 2]
            r, rnorm = self._conv(c1, a, norm, relu=relu_in, skip=skip, skip_out=new_skip, trace=trace)
            a, norm = self._conv(c2, r, rnorm, relu=True, trace=trace)
            skip, relu_in = new_skip, False
        a, norm = self._conv(self.tail[0], a, norm, relu=relu_in, skip=skip, trace=trace)  # up(x_B)
        a, norm = self._conv(self.tail[1], a, norm, relu=True, trace=trace)
        out = torch.empty((N, 3, H, W), device=x.device, dtype=torch.float32)
        y, _ = self._conv(self.tail[2], a, norm, relu=True, out=out, trace=trace)
        return y


def make_runner(model: nn.Module, device: torch.device, dtype: torch.dtype, *, cuda_graphs: bool = True,
                prenorm: str = "auto"):
    """Backend factory (engine.backends): the fused chain, CUDA-graphed per shape on CUDA."""
    check_supported(model)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise BackendUnavailable(f"backend 'fused' supports fp32, fp16 and bf16, not {dtype}")
    device = torch.device(device)
    if device.type != "cuda" and not ci._INTERPRET:
        raise BackendUnavailable("backend 'fused' needs a CUDA device (or TRITON_INTERPRET=1 to run its Triton "
                                 "kernels in the CPU interpreter, slowly)")
    chain = FusedChain(model, dtype, prenorm)
    if device.type == "cuda" and cuda_graphs:
        return GraphCache(chain, capacity=GRAPH_CACHE_SIZE)
    return lambda x: chain(x.to(device))
