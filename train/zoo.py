"""The style zoo: train the shipped styles in one conditional-IN Johnson net, gate them, keep what passed.

`python -m instyle.bench.campaign --stage zoo` runs these steps on a GPU loan, each writing its files as it
finishes (and bench/zoo_pictures.py pictures what shipped):
  train     every style image at once (one gamma/beta row each), bf16 + channels_last, the compiled step
            (train/compiled_step.py), for a wall-clock budget that its compiling counts against; checkpoints,
            log CSV, loss plot, sample grids and Adam's moments beside the model. From the shipped zoo by
            default (--init), so each loan adds to the last one's training instead of starting over
  gate      on photos it never trained on (held-out training photos and the demo photos, 384 px), per style,
            the metric of train/style_metric.py: median gram_ratio <= 0.30 (VGG-16 relu1_2..relu4_3 Grams)
            and median relative relu3_3 content distance <= 3.0. The shipped zoo is gated the same way on
            the same photos (`baseline`)
  ship      only when the new zoo gates better than the shipped one (`better`): every style, fp16 safetensors
            (zoo/styles.safetensors); the campaign adds one picture per style and a crop of a 4K stylization. A
            style that failed keeps its row; `retrain` in the summary gives its style-weight multiplier for
            the next run
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

# Shipping order: the first is the default style. Others found in the styles folder follow, sorted.
PREFERRED = ["candy", "mosaic", "starry_night", "udnie", "la_muse", "the_scream", "wave", "rain-princess-cropped",
             "composition_vii", "feathers", "rain-princess"]
HELD_OUT = 20  # training photos kept out of training for the gate


def style_files(folder: Path) -> list[Path]:
    from instyle.io import IMAGE_EXTENSIONS

    found = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    order = [n for n in PREFERRED if n in found] + sorted(n for n in found if n not in PREFERRED)
    return [found[n] for n in order]


def split_photos(folder: Path, out: Path) -> tuple[Path, list[Path]]:
    """A folder of links to all but the last HELD_OUT photos (training), and the held-out ones."""
    from instyle.train.data import list_images

    photos = list_images(folder)
    held = photos[-HELD_OUT:] if len(photos) > 2 * HELD_OUT else []
    train_dir = out / "train-photos"
    train_dir.mkdir(parents=True, exist_ok=True)
    for p in photos[:len(photos) - len(held)]:
        link = train_dir / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    return train_dir, held


def train(out: Path, data: Path, *, budget: float | None, image_size: int, batch: int, model_config: dict,
          styles: list[Path], workers: int, device: str, fused: str = "off", style_size: int = 512,
          init: Path | None = None, iterations: int = 10**9, style_weight: float | None = None,
          multipliers: dict[str, float] | None = None, balance: str = "gram", checkpoint_every: int = 500,
          lattice_weight: float | None = None, lr: float = 1e-3, resume: bool = False,
          warmup: int | None = None, teacher: Path | None = None, distill_weight: float = 0.0,
          content_weight: float | None = None, tv_weight: float | None = None, compile: bool | str = False) -> dict:
    """Train the styles for `budget` seconds (or `iterations` steps): each style's loss balanced by its Gram
    magnitude (`balance`), times its entry in `multipliers` (by name, default 1), times `style_weight`
    (default: the balanced default of the VGG file's convention). With `teacher` (a trained zoo holding every
    style, by name) the `distill_weight` term pulls the output towards the teacher's (how the slim zoo learns
    from the full one). `compile`: the compiled step (bf16 or fp32; its compiling counts against `budget`)."""
    from instyle.train.trainer import TrainConfig, Trainer

    unknown = sorted(set(multipliers or {}) - {p.stem for p in styles})
    if unknown:
        raise ValueError(f"style weight multipliers for styles not trained: {', '.join(unknown)}")
    loss, vgg_info = perceptual_loss(data, styles, device=device, balance=balance, style_size=style_size,
                                     multipliers=multipliers, content=content_weight, style=style_weight,
                                     tv=tv_weight, lattice=lattice_weight, distill=distill_weight)
    if distill_weight:
        loss.set_teacher(*load_teacher(teacher, [p.stem for p in styles]))
    train_dir, _ = split_photos(data / "content" / "train", out)
    model_out = out / "train" / "styles.safetensors"
    cfg = TrainConfig(style=[str(p) for p in styles], out=str(model_out), data=str(train_dir),
                      model_config=model_config, image_size=image_size, batch_size=batch, iterations=iterations,
                      workers=workers, checkpoint_every=checkpoint_every, sample_every=checkpoint_every,
                      log_every=25, device=device, save_dtype="fp16", progress=False, time_budget=budget,
                      overwrite=not resume, resume=resume, vgg_info=vgg_info,
                      fused=fused, init=str(init) if init else None, lr=lr, warmup=warmup, compile=compile)
    trainer = Trainer(cfg, loss)
    trainer.fit()
    return {"model": model_out, "steps": trainer.step, "images": trainer.step * batch,
            "fused_layers": trainer.n_fused, "amp": trainer.amp, "channels_last": trainer.channels_last,
            "compiled": compile, "first_step_s": trainer.first_step_s,
            "final_losses": trainer.final_losses, "init": trainer.init_record, "losses": loss.spec.as_dict()}


def perceptual_loss(data: Path, styles: list[Path], *, device: str = "cpu", balance: str = "gram",
                    style_size: int = 512, multipliers: dict[str, float] | None = None, **weights: float | None):
    """(the zoo's loss for `styles`, the vgg_info a checkpoint records): the VGG file of `data`, the calibrated
    weights of its convention, each of `weights` (content, style, tv, lattice, distill; None keeps the default)
    replacing its default, and per-style `multipliers` by name. The style targets are set; a teacher is not."""
    from instyle.checkpoint import read_metadata
    from instyle.train.common import load_image
    from instyle.train.losses import LossSpec, PerceptualLoss, default_weights
    from instyle.train.vgg import infer_convention, load_vgg, resolve_path

    unknown = sorted(set(weights) - {"content", "style", "tv", "lattice", "distill"})
    if unknown:
        raise TypeError(f"unknown loss weights {', '.join(unknown)}")
    vgg_path = resolve_path(data / "vgg")
    convention = infer_convention(read_metadata(vgg_path), vgg_path)
    w = {"distill": 0.0, **default_weights(convention, balance), **{k: v for k, v in weights.items() if v is not None}}
    spec = LossSpec(content_weight=w["content"], style_weight=w["style"], tv_weight=w["tv"], style_balance=balance,
                    style_multipliers=[float((multipliers or {}).get(p.stem, 1.0)) for p in styles],
                    lattice_weight=w["lattice"], distill_weight=w["distill"])
    dev = torch.device(device)
    loss = PerceptualLoss(load_vgg(spec.layers(), vgg_path, device=dev), spec)
    loss.set_styles([load_image(p, style_size).to(dev) for p in styles])
    return loss, {"file": vgg_path.name, "convention": convention}


def load_teacher(path: Path | None, names: list[str]):
    """(the trained zoo at `path` in fp32, its row of each of `names`); every name must be one of its styles."""
    from instyle import checkpoint

    if path is None:
        raise ValueError("distillation needs a teacher zoo")
    model, meta = checkpoint.load(path)
    held = checkpoint.style_names(meta)
    missing = [n for n in names if n not in held]
    if missing:
        raise ValueError(f"{path}: the teacher lacks styles {', '.join(missing)}")
    return model.float(), [held.index(n) for n in names]


@torch.no_grad()
def photo_batch(paths: list[Path], side: int, device) -> torch.Tensor:
    """Center square crops resized to side x side: one N,3,side,side batch, 0..255."""
    from instyle.io import read_image, to_tensor

    out = []
    for p in paths:
        x = to_tensor([read_image(p)]).float()
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).to(device)


@torch.no_grad()
def gate(model_path: Path, data: Path, photos: list[Path], *, side: int, device: str, style_size: int = 512,
         only: list[str] | None = None, style_images: dict[str, Path] | None = None,
         vgg_path: Path | None = None) -> dict:
    """Per style (those in `only`, default all), the gate metric (train/style_metric.py) over `photos`: median
    gram_ratio, content and lattice, passed. Style images: `style_images` by name, else data/styles/ by the
    model's recorded source file; VGG: `vgg_path`, else data/vgg/."""
    from instyle import checkpoint
    from instyle.train import style_metric as M
    from instyle.train.common import load_image
    from instyle.train.vgg import load_vgg, resolve_path

    dev = torch.device(device)
    model, meta = checkpoint.load(model_path, device=dev)
    model.float()
    names = checkpoint.style_names(meta)
    sources = checkpoint.style_entries(meta)
    vgg = load_vgg(M.METRIC_LAYERS, resolve_path(vgg_path or data / "vgg"), device=dev).float()
    x = photo_batch(photos, side, dev)
    fx = vgg(x)
    result = {}
    for s, name in enumerate(names):
        if only is not None and name not in only:
            continue
        image = (style_images or {}).get(name) or data / "styles" / sources[s]["source"]
        target = M.style_grams(vgg, load_image(image, style_size).to(dev))
        weights = torch.zeros(x.shape[0], len(names), device=dev)
        weights[:, s] = 1
        y = torch.cat([model(x[i:i + 4], weights[i:i + 4] if len(names) > 1 else None)
                       for i in range(0, x.shape[0], 4)]).clamp(0, 255)
        scores = M.score(vgg, x, y, target, photo_feats=fx)
        result[name] = M.verdict(scores["gram_ratio"], scores["content"], M.lattice(y))
    return {"photos": [p.name for p in photos], "side": side, "metric": "instyle.train.style_metric",
            "photo_lattice_median": round(float(M.lattice(x).quantile(0.5)), 2),
            "thresholds": {"gram_ratio_median_max": M.GATE_RATIO, "content_median_max": M.GATE_CONTENT},
            "styles": result}


def better(new: dict, old: dict | None) -> tuple[bool, str]:
    """Whether the `new` gate beats the `old` (the shipped zoo's, same photos and metric; None: nothing shipped).
    Compared on the styles both hold: more of them pass, or as many and a lower median of their gram ratios;
    and the new one must hold every style the old one does (a style is retrained, never dropped) and, where
    both gates report it, its median lattice figure must be no higher (a stronger dot grid is not better)."""
    import statistics

    if old is None:
        return True, "no shipped zoo to beat"
    a, b = new["styles"], old["styles"]
    lost = sorted(set(b) - set(a))
    if lost:
        return False, f"lacks shipped styles {', '.join(lost)}"
    common = [n for n in a if n in b]
    passes = [sum(g[n]["passed"] for n in common) for g in (a, b)]
    medians = [statistics.median(g[n]["gram_ratio_median"] for n in common) for g in (a, b)]
    why = f"{passes[0]} vs {passes[1]} of {len(common)} shared styles pass; median ratio {medians[0]:.4f} vs " \
          f"{medians[1]:.4f}"
    wins = passes[0] > passes[1] or (passes[0] == passes[1] and medians[0] < medians[1])
    if all("lattice_median" in g[n] for g in (a, b) for n in common):
        grids = [statistics.median(g[n]["lattice_median"] for n in common) for g in (a, b)]
        why += f"; median lattice {grids[0]:.2f} vs {grids[1]:.2f}"
        wins = wins and grids[0] <= grids[1]
    return wins, why


def retrain_multipliers(verdict: dict, ratio: float) -> dict[str, float]:
    """For the styles that failed on style (gram ratio above `ratio`): the style-weight multiplier a next run
    starts from, ratio_median / ratio rounded up to a quarter (a style is retrained harder, not dropped)."""
    import math

    return {n: math.ceil(4 * r["gram_ratio_median"] / ratio) / 4 for n, r in verdict["styles"].items()
            if r["gram_ratio_median"] > ratio}


def keep_styles(model_path: Path, keep: list[str], out_path: Path) -> Path | None:
    """The model with only the `keep` styles' rows, saved fp16 (None when nothing is kept)."""
    from instyle import checkpoint
    from instyle.models.styles import restyle

    if not keep:
        return None
    model, meta = checkpoint.load(model_path)
    names = checkpoint.style_names(meta)
    rows = [names.index(n) for n in keep]
    styles_meta = checkpoint.style_entries(meta)
    kept = restyle(model, len(rows), lambda old: old[rows])
    training = json.loads(meta.get("training") or "{}")
    training["gate"] = "passed"
    return checkpoint.save(kept, out_path, style=keep[0], styles=[styles_meta[i] for i in rows] if len(rows) > 1
                           else None, training=training, dtype=torch.float16)
