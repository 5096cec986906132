"""Pieces the train, gatys and texture commands share: image loading and loss options."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the functions that use it: `instyle --help` stays light
    import torch


def load_image(path: str | os.PathLike, max_side: int | None = None, multiple: int = 1) -> torch.Tensor:
    """An image file -> 1,3,H,W float32 RGB 0..255, scaled so its longer side is `max_side` (None: as is),
    then cropped to a multiple of `multiple` in both dimensions."""
    from instyle.io import read_image, resize_picture, to_tensor

    pic = read_image(path)
    w, h = pic.size
    if max_side:
        s = max_side / max(w, h)
        w, h = max(1, round(w * s)), max(1, round(h * s))
        pic = resize_picture(pic, (w, h))
    x = to_tensor([pic])
    if multiple > 1:
        hh, ww = (h // multiple) * multiple, (w // multiple) * multiple
        if hh < multiple or ww < multiple:
            raise ValueError(f"{path}: {w}x{h} is too small (needs at least {multiple} px per side)")
        top, left = (h - hh) // 2, (w - ww) // 2
        x = x[..., top:top + hh, left:left + ww]
    return x.contiguous()


def save_image(path: str | os.PathLike, x: torch.Tensor) -> Path:
    """1,3,H,W (or 3,H,W) float 0..255 -> image file (format from the extension), atomically."""
    from instyle.io import Picture, rgb_from_tensor, write_image

    return write_image(path, Picture(rgb_from_tensor(x[0] if x.dim() == 4 else x)))


def add_loss_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--vgg", metavar="PATH", help="VGG weights file or folder (default: $INSTYLE_VGG, else the "
                   "shared data folder's vgg/)")
    g.add_argument("--vgg-input", choices=("auto", "caffe", "torchvision"), default="auto",
                   help="VGG input convention (default: from the file's metadata; .pth: torchvision)")
    g.add_argument("--content-layers", default="relu2_2", help="comma-separated (default relu2_2; e.g. relu4_2)")
    g.add_argument("--style-layers", default="relu1_1,relu2_1,relu3_1,relu4_1",
                   help="comma-separated (default %(default)s; texture_nets README variant: "
                        "relu1_2,relu2_2,relu3_2,relu4_2)")
    g.add_argument("--style-layer-weights", help="comma-separated, one per style layer (default: all 1)")
    g.add_argument("--content-weight", type=float, help="default: tuned for the file's input convention")
    g.add_argument("--style-weight", type=float, help="default: tuned for the file's input convention")
    g.add_argument("--tv-weight", type=float, help="total variation weight (default: tuned)")
    g.add_argument("--lattice-weight", type=float, help="weight of the stride-lattice term, which damps a dot grid "
                   "locked to the generator's stride (default: calibrated with --style-balance gram, else 0)")
    g.add_argument("--style-size", type=int, default=512, help="longer side of the style image (default 512)")
    g.add_argument("--style-balance", choices=("auto", "gram", "off"), default="auto",
                   help="gram: each style's loss relative to its own Gram magnitude, so styles train to comparable "
                        "strength under one --style-weight; off: raw Gram error (auto: gram with several styles "
                        "or --finetune, whose base was trained balanced)")


def loss_from_args(args, device: torch.device, *, texture: bool = False):
    """(PerceptualLoss with the style Grams set, LossSpec) from the options of `add_loss_arguments`."""
    from instyle.checkpoint import read_metadata

    from .losses import LossSpec, PerceptualLoss, default_weights, parse_layers
    from .vgg import infer_convention, load_vgg, resolve_path

    path = resolve_path(args.vgg)
    convention = args.vgg_input
    if convention == "auto":
        meta = read_metadata(path) if path.suffix == ".safetensors" else {}
        convention = infer_convention(meta, path)
    paths = [args.style] if isinstance(args.style, (str, Path)) else list(args.style)
    balance = getattr(args, "style_balance", "auto")
    if balance == "auto":
        balance = "gram" if len(paths) > 1 or getattr(args, "finetune", None) else "off"
    weights = default_weights(convention, balance)
    spec = LossSpec(
        content_layers=[] if texture else parse_layers(args.content_layers),
        style_layers=parse_layers(args.style_layers),
        style_layer_weights=[float(s) for s in args.style_layer_weights.split(",")] if args.style_layer_weights
        else None,
        content_weight=0.0 if texture else (weights["content"] if args.content_weight is None
                                            else args.content_weight),
        style_weight=weights["style"] if args.style_weight is None else args.style_weight,
        tv_weight=weights["tv"] if args.tv_weight is None else args.tv_weight,
        lattice_weight=(0.0 if texture else weights["lattice"]) if getattr(args, "lattice_weight", None) is None
        else args.lattice_weight,
        style_balance=balance, style_multipliers=getattr(args, "style_multipliers", None),
    )
    spec.layer_weights()  # validates the count
    vgg = load_vgg(spec.layers(), path, convention=convention, device=device)
    loss = PerceptualLoss(vgg, spec)
    loss.set_styles([load_image(p, args.style_size).to(device) for p in paths])
    return loss, spec
