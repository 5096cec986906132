"""A narrower Johnson generator cut out of a trained one: where the slim zoo's distillation starts.

    python -m instyle.train.prune --model instyle/zoo/styles.safetensors --width 16 --out slim-start.safetensors

Every convolution of the Johnson net but the last feeds an instance norm, which renormalizes whatever channels
reach it, so dropping channels costs only what they carried. A channel is kept by its importance: how strongly
its norm lets it through (mean |gamma| over styles) times how much the next convolution reads it (the L2 norm of
that convolution's input slice). The residual trunk is one channel set (in3 and every block's second norm add
into it). Every style keeps its (gamma, beta) rows, cut the same way, so a distillation from the full network
(train/losses.py: distill) starts with its styles told apart instead of from one grey mean (measured: from
scratch, 300 steps of 8 had not separated 11 styles).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from instyle.models.johnson import JohnsonNet


def _gamma(norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().reshape(-1, norm.num_features)  # S x C (one row for plain IN)


def _reads(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)  # per input channel


def _keep(norms: list[nn.Module], readers: list[nn.Conv2d], n: int) -> torch.Tensor:
    score = sum(_gamma(m).abs().mean(0) for m in norms) * sum(_reads(c) for c in readers)
    return score.topk(n).indices.sort().values


@torch.no_grad()
def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out: torch.Tensor | None, inp: torch.Tensor | None) -> None:
    w, b = src.weight, src.bias
    if out is not None:
        w, b = w[out], b[out]
    if inp is not None:
        w = w[:, inp]
    dst.weight.copy_(w)
    dst.bias.copy_(b)


@torch.no_grad()
def _copy_norm(dst: nn.Module, src: nn.Module, keep: torch.Tensor) -> None:
    dst.weight.copy_(src.weight[..., keep])
    dst.bias.copy_(src.bias[..., keep])


@torch.no_grad()
def cut(model: JohnsonNet, width: int) -> JohnsonNet:
    """A JohnsonNet of `width` (and the same blocks, norm, padding and styles) with `model`'s most important
    channels. Needs instance norm and nearest upsampling (the shipped zoo's)."""
    c = model.config
    if c.get("norm", "instance") != "instance" or c.get("upsampling", "nearest") != "nearest":
        raise ValueError("cutting a generator needs instance norm and nearest upsampling, got "
                         f"norm={c.get('norm')!r} upsampling={c.get('upsampling')!r}")
    if not 1 <= width <= c.get("width", 32):
        raise ValueError(f"width {width} must be between 1 and the model's {c.get('width', 32)}")
    blocks = [getattr(model, n) for n in model.res_names]
    w1, w2, w3 = width, 2 * width, 4 * width
    k1 = _keep([model.in1], [model.conv2.conv2d], w1)
    k2 = _keep([model.in2], [model.conv3.conv2d], w2)
    k3 = _keep([model.in3, *(b.in2 for b in blocks)], [*(b.conv1.conv2d for b in blocks), model.deconv1.conv2d], w3)
    inner = [_keep([b.in1], [b.conv2.conv2d], w3) for b in blocks]
    k4 = _keep([model.in4], [model.deconv2.conv2d], w2)
    k5 = _keep([model.in5], [model.deconv3.conv2d], w1)

    new = JohnsonNet(width=width, blocks=len(blocks), norm="instance", padding=c.get("padding", "reflect"),
                     upsampling="nearest", styles=model.styles).to(model.conv1.conv2d.weight.dtype)
    # (conv, the norm after it, its output channels kept, its input channels kept)
    layers = [("conv1", "in1", k1, None), ("conv2", "in2", k2, k1), ("conv3", "in3", k3, k2)]
    for name, k in zip(new.res_names, inner):
        layers += [(f"{name}.conv1", f"{name}.in1", k, k3), (f"{name}.conv2", f"{name}.in2", k3, k)]
    layers += [("deconv1", "in4", k4, k3), ("deconv2", "in5", k5, k4)]
    for conv, norm, out, inp in layers:
        _copy_conv(new.get_submodule(conv).conv2d, model.get_submodule(conv).conv2d, out, inp)
        _copy_norm(new.get_submodule(norm), model.get_submodule(norm), out)
    # the last conv now sums fewer channels; scaling its weights up to make up for them was measured worse (on
    # 2 photos x 11 styles the cut network's RMS error to the full one grew from 61 to 68 on 0..255): a wrong
    # detail at full contrast costs more than a faint one
    _copy_conv(new.deconv3.conv2d, model.deconv3.conv2d, None, k5)
    return new


def main(argv: list[str] | None = None) -> int:
    from instyle import checkpoint

    p = argparse.ArgumentParser(prog="python -m instyle.train.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the trained Johnson generator to cut")
    p.add_argument("--width", type=int, required=True, help="the new width (the shipped zoo's is 32)")
    p.add_argument("--out", type=Path, required=True, help="the cut generator (.safetensors, fp32)")
    a = p.parse_args(argv)
    model, meta = checkpoint.load(a.model)
    if model.arch != "johnson":
        raise SystemExit(f"{a.model}: a {model.arch} generator; cutting works on johnson")
    new = cut(model.float(), a.width)
    entries = checkpoint.style_entries(meta)
    training = {"cut_from": a.model.name, "cut_width": a.width, "iterations": 0}
    checkpoint.save(new, a.out, style=entries[0]["name"], styles=entries if len(entries) > 1 else None,
                    training=training)
    print(f"{a.out}: width {a.width} cut from {a.model} ({json.dumps(new.config)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
