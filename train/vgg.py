"""VGG-16/19 feature extractor for the perceptual losses, loaded from a weights file (never a hub).

Layers are addressed by name (relu1_1 ... relu5_x); only the layers up to the deepest one asked for are
built. Two input conventions exist for ImageNet VGG weights, and the loader follows the file:

* ``torchvision``: RGB, x/255, then (x - mean) / std with ImageNet mean/std (torchvision's
  ``vgg16-397923af.pth`` / ``vgg19-dcbb9e9d.pth``, what pytorch/examples uses);
* ``caffe``: BGR, 0..255, minus the mean (103.939, 116.779, 123.68), no std (the original Caffe VGG,
  Keras, and the project's shared ``vgg16-features.safetensors``, whose metadata says so).

The extractor always takes the generator's contract, RGB 0..255, and normalises internally. Weights
are frozen (eval, requires_grad False).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

# convolutions per block
BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
CONVENTIONS = ("torchvision", "caffe")
_NORMALIZE = {
    # (bgr, scale, mean, std) applied to RGB 0..255 input: flip, *scale, -mean, /std (channel order after flip)
    "torchvision": (False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "caffe": (True, 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
}
GET_WEIGHTS = ("get ImageNet VGG weights, e.g. torchvision's vgg16-397923af.pth "
               "(https://download.pytorch.org/models/vgg16-397923af.pth) or the project's shared-data file "
               "vgg/vgg16-features.safetensors, then pass --vgg PATH or set INSTYLE_VGG")


class VGGWeightsError(ValueError):
    """A missing or unusable VGG weights file; the message says what to do."""


def layer_indices(arch: str) -> dict[str, int]:
    """Layer name -> index in torchvision's ``features`` Sequential (conv1_1: 0, relu1_1: 1, pool1: 4, ...)."""
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r} (known: {', '.join(BLOCKS)})")
    names, idx = {}, 0
    for b, n in enumerate(BLOCKS[arch], start=1):
        for i in range(1, n + 1):
            names[f"conv{b}_{i}"], names[f"relu{b}_{i}"] = idx, idx + 1
            idx += 2
        names[f"pool{b}"] = idx
        idx += 1
    return names


class VGGFeatures(nn.Module):
    """The convolutional part of VGG up to the deepest requested layer; forward returns {name: activation}.

    `state_dict` holds torchvision-layout keys (``features.N.weight|bias``); None keeps the random
    initialisation (tests, which may also shrink the per-block `widths`). Input: RGB 0..255, any float
    dtype; normalisation per `convention`.
    """

    def __init__(self, layers: Iterable[str], arch: str = "vgg16", *, convention: str = "torchvision",
                 state_dict: Mapping[str, torch.Tensor] | None = None, source: str = "(state dict)",
                 widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        index = layer_indices(arch)
        self.layers = list(dict.fromkeys(layers))
        bad = [n for n in self.layers if n not in index]
        if bad:
            known = ", ".join(n for n in index if n.startswith("relu"))
            raise ValueError(f"unknown {arch} layer(s) {', '.join(bad)} (known: {known})")
        if convention not in CONVENTIONS:
            raise ValueError(f"VGG input convention must be one of {CONVENTIONS}, got {convention!r}")
        self.arch, self.convention = arch, convention
        self._wanted = {index[n]: n for n in self.layers}
        depth = max(self._wanted) + 1
        modules: list[nn.Module] = []
        cin = 3
        for b, n in enumerate(BLOCKS[arch]):
            for _ in range(n):
                modules += [nn.Conv2d(cin, widths[b], 3, padding=1), nn.ReLU()]
                cin = widths[b]
            modules.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules[:depth])
        bgr, scale, mean, std = _NORMALIZE[convention]
        self.bgr, self.scale = bgr, scale
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if state_dict is not None:
            self._load(state_dict, source)
        self.eval().requires_grad_(False)

    def _load(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        own = self.features.state_dict()
        names = {v: k for k, v in layer_indices(self.arch).items()}
        for key, ref in own.items():
            full = f"features.{key}"
            if full not in state:
                conv = names[int(key.split(".")[0])]
                deepest = self._wanted[max(self._wanted)]
                raise VGGWeightsError(f"{source}: has no weights for {conv} ({full}), needed for layer {deepest}; "
                                      f"use shallower layers or a complete VGG file")
            if tuple(state[full].shape) != tuple(ref.shape):
                raise VGGWeightsError(f"{source}: {full} has shape {tuple(state[full].shape)}, expected "
                                      f"{tuple(ref.shape)} for {self.arch}")
            own[key] = state[full].detach().to(torch.float32)
        self.features.load_state_dict(own)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always eval: the loss network is fixed

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        return (x * self.scale - mean) / std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = self.normalize(x)
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self._wanted:
                out[self._wanted[i]] = h
        return out


# ---------------------------------------------------------------------------------------------- files

def default_search() -> list[Path]:
    """Where a VGG file is looked for when neither --vgg nor $INSTYLE_VGG names one, in order."""
    from instyle.paths import data_dir

    d = data_dir()
    return [d / "vgg", d / "device-bundle"]


_PREFERRED = ("vgg16-features.safetensors", "vgg16-397923af.pth", "vgg16-features-relu4_3-fp16.safetensors",
              "vgg19-dcbb9e9d.pth")


def _pick_in_folder(folder: Path) -> Path | None:
    for name in _PREFERRED:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.glob("*vgg*") if p.suffix in (".safetensors", ".pth", ".pt"))
    return found[0] if found else None


def resolve_path(path: str | os.PathLike | None = None) -> Path:
    """The VGG weights file: `path` (a file or a folder), else $INSTYLE_VGG, else the shared data folder."""
    given = path if path is not None else os.environ.get("INSTYLE_VGG") or None
    if given is not None:
        p = Path(given).expanduser()
        if p.is_dir():
            found = _pick_in_folder(p)
            if found is None:
                raise VGGWeightsError(f"{p}: no VGG weights file (*vgg*.safetensors or .pth) in this folder; "
                                      f"{GET_WEIGHTS}")
            return found
        if not p.is_file():
            raise VGGWeightsError(f"{p}: no such VGG weights file; {GET_WEIGHTS}")
        return p
    for folder in default_search():
        if folder.is_dir() and (found := _pick_in_folder(folder)) is not None:
            return found
    looked = ", ".join(str(f) for f in default_search())
    raise VGGWeightsError(f"no VGG weights found (looked in {looked}); {GET_WEIGHTS}")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict (``features.N.*`` keys) and metadata of a .safetensors or torchvision .pth VGG file."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise VGGWeightsError(f"{path}: cannot read VGG weights ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle refusals, truncation: one message either way
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise VGGWeightsError(f"{path}: cannot read VGG weights as a plain state dict ({first})") from None
        if not isinstance(state, dict):
            raise VGGWeightsError(f"{path}: not a state dict")
        meta = {}
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith("features.") for k in state):
        raise VGGWeightsError(f"{path}: no 'features.N.weight' keys: not a torchvision-layout VGG file "
                              f"(AdaIN's vgg_normalised.pth and other layouts are not supported)")
    return state, meta


def infer_arch(state: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    if meta.get("arch") in BLOCKS:
        return meta["arch"]
    # conv3_4 (features.16) exists only in VGG-19; in VGG-16 index 16 is pool3
    return "vgg19" if "features.16.weight" in state else "vgg16"


def infer_convention(meta: Mapping[str, str], path: Path) -> str:
    text = meta.get("input", "")
    if "BGR" in text or "caffe" in text.lower():
        return "caffe"
    if text and "RGB" in text:
        return "torchvision"
    if path.suffix == ".safetensors" and "caffe" in path.name.lower():
        return "caffe"
    return "torchvision"  # torchvision .pth files carry no metadata


def load_vgg(layers: Iterable[str], path: str | os.PathLike | None = None, *, convention: str = "auto",
             arch: str | None = None, device=None) -> VGGFeatures:
    """Frozen VGG features for `layers` from a weights file (see `resolve_path`); convention "auto"
    follows the file's metadata (torchvision .pth files: torchvision)."""
    p = resolve_path(path)
    state, meta = read_weights(p)
    arch = arch or infer_arch(state, meta)
    conv = infer_convention(meta, p) if convention == "auto" else convention
    vgg = VGGFeatures(layers, arch, convention=conv, state_dict=state, source=str(p))
    vgg.path = str(p)
    return vgg.to(device) if device is not None else vgg
