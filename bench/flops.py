"""FLOPs of a generator, counted from the layers it really runs.

`count(model)` runs the model once on a small probe input with forward hooks on every leaf module and
adds up what each layer computes; the generators are fully convolutional, so the totals scale with the
pixel count and are reported per input pixel (exact for sizes that are multiples of the stride multiple,
which is what the engine pads to).

What is counted:
- `conv`: 2 x multiply-accumulates of Conv2d (N*Cout*Hout*Wout*Cin/groups*kh*kw) and ConvTranspose2d
  (N*Cin*Hin*Win*Cout/groups*kh*kw), and Linear. This is the work tensor cores do; the achieved TFLOP/s
  and %-of-peak columns of the benchmark use it alone.
- `other`: conv bias adds (1 per output element), instance/group norm (7 per element: mean 1, variance 2,
  normalize 2, affine 2), eval batch norm (2 per element), ReLU-like activations (1 per element).
Not counted: functional ops outside modules (the residual `+ x`, F.interpolate, F.avg_pool2d, padding,
the final clamp), which move data rather than compute.
"""
from __future__ import annotations

import torch
from torch import nn

_NORM_FLOPS = 7  # per element: mean (1), variance (2), (x - mean) * rstd (2), affine (2)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh)


def _layer_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(conv FLOPs, other FLOPs) of one call of a leaf module."""
    if isinstance(module, nn.Conv2d):
        n, cout, ho, wo = out.shape
        kh, kw = module.kernel_size
        macs = n * cout * ho * wo * (module.in_channels // module.groups) * kh * kw
        return 2 * macs, (out.numel() if module.bias is not None else 0)
    if isinstance(module, nn.ConvTranspose2d):
        n, cin, hi, wi = inp.shape
        kh, kw = module.kernel_size
        macs = n * cin * hi * wi * (module.out_channels // module.groups) * kh * kw
        return 2 * macs, (out.numel() if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        return 2 * inp.numel() * module.out_features, (out.numel() if module.bias is not None else 0)
    if isinstance(module, (nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)):
        return 0, _NORM_FLOPS * out.numel()
    if isinstance(module, nn.BatchNorm2d):
        return 0, 2 * out.numel()
    if isinstance(module, _ACTIVATIONS):
        return 0, out.numel()
    return 0, 0


def probe_size(model: nn.Module) -> int:
    """A small square size the model accepts unpadded (a multiple of its stride, at least its minimum)."""
    multiple = int(getattr(model, "stride_multiple", 1))
    side = max(int(getattr(model, "min_size", 1)), 2 * multiple, 32)
    return -(-side // multiple) * multiple


def input_channels(model: nn.Module) -> int:
    noise = int(getattr(model, "noise_channels", 0) or 0)
    return noise + (0 if getattr(model, "mode", "style") == "texture" else 3)


@torch.no_grad()
def count(model: nn.Module, size: int | None = None) -> dict:
    """Per-input-pixel FLOPs of `model`: {"conv", "other", "total", "layers": [(name, type, conv, other)]}."""
    side = size or probe_size(model)
    per_layer: list[tuple[str, str, int, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # only leaves: containers would count their children twice

        def hook(mod, args, out, name=name):
            conv, other = _layer_flops(mod, args[0], out)
            if conv or other:
                per_layer.append((name, type(mod).__name__, conv, other))

        hooks.append(module.register_forward_hook(hook))
    param = next(model.parameters(), None)
    x = torch.zeros(1, input_channels(model), side, side,
                    device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    pixels = side * side
    conv = sum(c for _, _, c, _ in per_layer) / pixels
    other = sum(o for _, _, _, o in per_layer) / pixels
    layers = [(n, t, c / pixels, o / pixels) for n, t, c, o in per_layer]
    return {"conv": conv, "other": other, "total": conv + other, "layers": layers, "probe": side}


def johnson_analytic(width: int = 32, blocks: int = 5, upsampling: str = "nearest") -> float:
    """Conv FLOPs per input pixel of JohnsonNet from its layer shapes alone (2 x MACs, stride multiples)."""
    w1, w2, w3 = width, 2 * width, 4 * width
    macs = (
        w1 * 3 * 81                         # conv1 9x9, full resolution
        + w2 * w1 * 9 / 4                   # conv2 3x3 stride 2 -> 1/4 of the pixels
        + w3 * w2 * 9 / 16                  # conv3 3x3 stride 2 -> 1/16
        + blocks * 2 * w3 * w3 * 9 / 16     # residual blocks: two 3x3 convs each at 1/16
        + w3 * w2 * 9 / (4 if upsampling == "nearest" else 16)  # deconv1: upsample+conv at 1/4 (or transposed: 1/16)
        + w2 * w1 * 9 / (1 if upsampling == "nearest" else 4)   # deconv2 (at 1/1, or transposed from 1/4)
        + 3 * w1 * 81                       # deconv3 9x9, full resolution
    )
    return 2 * macs


def weight_bytes(model: nn.Module, bytes_per_element: int) -> int:
    return sum(p.numel() for p in model.parameters()) * bytes_per_element


def bound_ms(conv_flops: float, min_bytes: float, peak_tflops: float | None, peak_gbps: float | None) -> float | None:
    """The physical lower bound: max(compute time at peak, minimum-traffic time at peak bandwidth)."""
    if not peak_tflops or not peak_gbps:
        return None
    return max(conv_flops / (peak_tflops * 1e12), min_bytes / (peak_gbps * 1e9)) * 1e3
