"""Stylizer: one generator, one backend, one precision, on one device.

The public face of the engine (`instyle.load` returns one). It owns the tensor contract: any N,3,H,W
input (float 0..255 or uint8) comes back as float32 0..255 of the same shape; padding to the
generator's stride multiple and the final clamp happen here, once, for every backend.
"""
from __future__ import annotations

import torch
from torch import nn

from . import backends
from .padding import crop, pad_to_multiple

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise backends.BackendUnavailable("device 'cuda' requested but no CUDA device is available")
    return device


class Stylizer:
    def __init__(self, model: nn.Module, *, backend: str = "eager", precision: str = "fp32",
                 device: str | torch.device = "cpu", metadata: dict | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} (choose from auto, {', '.join(PRECISIONS)})")
        self.device = resolve_device(device)
        self.backend = backend
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.metadata = dict(metadata or {})
        self.model = model.eval().to(self.device, self.dtype)
        self.stride_multiple = model.stride_multiple
        self.min_size = model.min_size
        self._run = backends.factory(backend)(self.model, self.device, self.dtype)

    @property
    def style(self) -> str:
        return self.metadata.get("style", "")

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N,3,H,W (float 0..255 or uint8, any device) -> float32 0..255 on the Stylizer's device."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N,3,H,W tensor, got shape {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        padded, size = pad_to_multiple(x, self.stride_multiple, self.min_size)
        y = self._run(padded)
        return crop(y, size).float().clamp_(0, 255)

    def stylize_image(self, image):
        """PIL image in, PIL image out (EXIF orientation, ICC profile and alpha handled)."""
        from PIL import ImageOps

        from instyle import io

        pic = io.picture_from_pil(ImageOps.exif_transpose(image))
        out = self(io.to_tensor([pic]))[0]
        return io.picture_to_pil(io.Picture(io.rgb_from_tensor(out), pic.alpha, pic.icc_profile))


def load(model=None, backend: str = "auto", precision: str = "auto", device: str = "auto", **kwargs) -> Stylizer:
    """A Stylizer for a shipped style name, a model file, or an nn.Module (see DESIGN.md, Public API)."""
    from instyle import checkpoint

    dev = resolve_device(device)
    if isinstance(model, nn.Module):
        module, meta = model, {}
    else:
        module, meta = checkpoint.load(checkpoint.resolve(model))
    if backend == "auto":
        backend = "eager"
    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else "fp32"
    return Stylizer(module, backend=backend, precision=precision, device=dev, metadata=meta, **kwargs)
