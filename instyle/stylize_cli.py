"""`instyle stylize`: batch-stylize files, folders (recursive) and globs.

Outputs keep their paths relative to the folder or glob base they were found under, and always land inside
-o: a relative path that would climb out (a glob with `..`, a symlink inside -o) is that file's error.
Walking a folder skips dot-files, dot-folders and -o itself. Inputs are regular files only (a FIFO, socket or
device node is one line, never opened); two inputs with one output are both errors (--keep-ext keeps them
apart). The whole plan is made before any work. -o is checked (a folder, writable) before any
work. Existing outputs are skipped unless --overwrite; every write is atomic; a bad file, whatever went
wrong with it, prints `error: PATH: cause` and the batch goes on; warnings (only the first frame of an
animated or multi-page file is stylized) print `warning: PATH: ...`. Exit code 0 when all succeeded, 1 when
any file failed, 2 on usage errors. Those rules live in instyle.jobs; this module runs them here, or on Ray
Data with --distributed ray (instyle.distributed), where the workers run the same per-file code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from instyle import distributed, video_cli
from instyle.errors import UsageError
from instyle.jobs import ImageOptions, Job, collect, pending, prepare_out_dir, report, stylize_images, target_size

__all__ = ["add_arguments", "run", "collect", "prepare_out_dir", "target_size", "parse_mix"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from instyle.specs import BACKEND_NAMES as BACKENDS  # no torch for --help
    from instyle.specs import DEFAULT_MAX_PIXELS, PRECISION_NAMES

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (recursive) or globs")
    p.add_argument("-o", "--out-dir", default="stylized", help="output folder (default: ./stylized)")
    p.add_argument("--model", help="shipped style name or model file (.safetensors, pytorch/examples .pth)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    p.add_argument("--precision", default="auto", choices=("auto",) + PRECISION_NAMES)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend's own option, repeatable (e.g. prenorm=all for fused, graphs=off; "
                        "docs/api.md)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--max-side", type=int, metavar="PX", help="downscale so the longer side is at most PX")
    size.add_argument("--scale", type=float, metavar="F", help="resize by factor F before stylizing")
    p.add_argument("--tile", default="auto", help="auto | off | tile side in pixels (exact tiled inference)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="stylize up to N equal-size images at once")
    p.add_argument("--format", metavar="EXT", help="output format (jpg, png, webp, ...); default: the input's")
    p.add_argument("--keep-ext", action="store_true", help="with --format, append the new extension to the input's "
                   "name (a.jpg -> a.jpg.png), so that a.jpg and a.png both get an output")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression-bomb guard, default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = p.add_argument_group("style controls")
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--style", metavar="NAME|INDEX", help="a style inside a multi-style model (default: its first; "
                      "`instyle models` lists them)")
    pick.add_argument("--mix", metavar="A=W,B=W", help="a mix of a multi-style model's styles (weights normalised)")
    g.add_argument("--strength", type=float, default=1.0, metavar="S",
                   help="0 = the input, 1 = the full style (default 1)")
    g.add_argument("--preserve-color", action="store_true", help="keep the input's colours (stylized luminance, "
                   "input chroma)")
    g.add_argument("--style-scale", type=float, default=1.0, metavar="F",
                   help="brush strokes F times larger (F < 1: smaller) at the same output size (default 1)")
    r = p.add_argument_group("regions (docs/regions.md)")
    r.add_argument("--mask", metavar="PNG", help="an 8-bit greyscale or RGB image whose values name regions "
                   "(resized to each image, nearest)")
    r.add_argument("--regions", metavar="SPEC", help="what each mask value gets: VALUE=MIX;VALUE=MIX;... with "
                   "VALUE a grey level 0..255, #rrggbb or * (any other), MIX none | NAME | NAME=W,NAME=W,... "
                   "(none=W: the photo's share), e.g. '0=none;255=candy' or '#ff0000=wave;#0000ff=candy=1,mosaic=1'")
    r.add_argument("--strength-map", metavar="PNG", help="per-pixel strength: an 8-bit greyscale image, "
                   "0 = the photo, 255 = the full style (times --strength)")
    r.add_argument("--feather", type=float, default=0.0, metavar="PX",
                   help="soften the mask's edges over about PX pixels (a Gaussian blur of the regions; default 0)")
    video_cli.add_arguments(p)
    distributed.add_arguments(p)


def _validate(args) -> None:
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.max_side is not None and args.max_side < 1:
        raise UsageError(f"--max-side must be >= 1, got {args.max_side}")
    if args.scale is not None and not 0 < args.scale <= 16:
        raise UsageError(f"--scale must be in (0, 16], got {args.scale}")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    if bool(args.mask) != bool(args.regions):
        raise UsageError("--mask and --regions go together: the mask's values mean nothing without --regions")
    if args.mask and (args.style is not None or args.mix):
        raise UsageError("--mask sets each region's style: name the styles in --regions, not --style/--mix")
    if not args.feather >= 0 or args.feather > 1000:
        raise UsageError(f"--feather must be between 0 and 1000 pixels, got {args.feather}")
    if args.feather and not args.mask:
        raise UsageError("--feather softens the edges of a --mask; give one")
    if (args.mask or args.strength_map) and args.distributed:
        raise UsageError("--mask/--strength-map run locally; drop --distributed")
    if args.format:
        from instyle.io import ImageError, format_for

        try:
            format_for("x." + args.format.lstrip("."))
        except ImageError as e:
            raise UsageError(str(e).removeprefix("x." + args.format.lstrip(".") + ": ")) from None


def _stylizer_kwargs(args) -> dict:
    from instyle.engine.stylizer import parse_tile
    from instyle.specs import check_control

    try:
        tile = parse_tile(args.tile)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    try:
        check_control("strength", args.strength, "--strength")
        check_control("style_scale", args.style_scale, "--style-scale")
    except ValueError as e:
        raise UsageError(str(e)) from None
    from instyle import masks

    regions = _regions(args)
    backend = args.backend
    if regions is not None and backend == "auto" and masks.distinct_styles(regions.mixes) > 1:
        backend = "eager"  # the one backend chain member that takes per-pixel style maps everywhere
        print("instyle: --regions with several styles runs backend eager (per-pixel style maps)", file=sys.stderr)
    return dict(backend=backend, precision=args.precision, device=args.device, tile=tile,
                style=args.style, mix=parse_mix(args.mix) if args.mix else None, strength=args.strength,
                preserve_color=args.preserve_color, style_scale=args.style_scale,
                options=_backend_options(backend, args.device, args.backend_option),
                **({"regions": regions} if regions is not None else {}))


def _regions(args):
    """The engine's Regions for --mask/--regions/--strength-map/--feather (None when none is given); files are
    read here, once, so a bad mask stops the run before any output."""
    if not (args.mask or args.strength_map):
        return None
    import torch

    from instyle import masks
    from instyle.engine.regions import Regions
    from instyle.specs import parse_regions

    labels = mixes = strength = None
    if args.mask:
        try:
            spec = parse_regions(args.regions)
        except ValueError as e:
            raise UsageError(str(e)) from None
        labels, mixes = masks.read_mask(args.mask, spec, args.max_pixels)
    if args.strength_map:
        strength = masks.read_strength_map(args.strength_map, args.max_pixels)
    return Regions(labels=None if labels is None else torch.from_numpy(labels), mixes=mixes or (),
                   strength=None if strength is None else torch.from_numpy(strength), feather=args.feather,
                   notify=lambda line: print(f"instyle: {line}", file=sys.stderr), source=f"--mask {args.mask}",
                   strength_source=f"--strength-map {args.strength_map}")


def _backend_options(backend: str, device: str, texts: list[str]) -> dict:
    """--backend-option values, checked against the backend table (or, for auto, the chain it tries)."""
    from instyle.engine import backends
    from instyle.specs import parse_option, resolve_device

    if not texts:
        return {}
    try:
        options = dict(parse_option(t) for t in texts)
        if backend != "auto":
            backends.check_options(backend, options)
            return options
        names = backends.chain(resolve_device(device))
        backends.split_options(names, options)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--backend-option: {e}" + ("; name one with --backend" if backend == "auto" else "")) \
            from None
    return options


def parse_mix(text: str) -> dict[str, float]:
    """'candy=2,mosaic=1' -> {"candy": 2.0, "mosaic": 1.0} (normalised later, against the model's names)."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, weight = item.strip().rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name or not value >= 0:
            raise UsageError(f"--mix {text!r}: expected NAME=WEIGHT,... with weights >= 0, e.g. candy=2,mosaic=1")
        mix[name] = mix.get(name, 0.0) + value
    return mix


def run(args) -> int:
    _validate(args)
    video_cli.validate(args)
    distributed.validate(args)
    kwargs = _stylizer_kwargs(args)
    prepare_out_dir(Path(args.out_dir))
    jobs, lines = collect(args.inputs, Path(args.out_dir), args.format, args.keep_ext)
    for line in lines:
        print(line, file=sys.stderr)
    failed = sum(line.startswith("error: ") for line in lines)
    todo, skipped = pending(jobs, args.overwrite)
    if not todo:
        if skipped:
            print(f"nothing to do: {skipped} output(s) exist (use --overwrite)", file=sys.stderr)
            return 1 if failed else 0
        if not failed:
            print(f"error: no image files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    finished = _run_ray(args, todo, kwargs) if args.distributed else _run_local(args, todo, kwargs)
    done = sum(job.ok for job in finished)
    failed += len(finished) - done
    print(f"{done} stylized, {skipped} skipped (exist), {failed} failed -> {args.out_dir}", file=sys.stderr)
    return 1 if failed else 0


def _load(model, kwargs):
    import instyle
    from instyle.models.styles import StyleError

    try:
        return instyle.load(model, **kwargs)
    except StyleError as e:
        raise UsageError(f"{'--regions' if kwargs.get('regions') is not None else '--style/--mix'}: {e}") from None


def _run_local(args, todo: list[Job], kwargs) -> list[Job]:
    """Stylize `todo` here with one Stylizer: videos first (streamed), then images in equal-size batches."""
    from tqdm import tqdm

    from instyle.video import is_video

    stylizer = _load(args.model, kwargs)
    _check_regions_backend(stylizer)
    videos = [j for j in todo if is_video(j.src)]
    images = [j for j in todo if j not in videos]
    video_cli.stylize_jobs(stylizer, videos, args, target_size)
    with tqdm(total=len(images), unit="img", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        def done(finished: list[Job]) -> None:
            report(finished)
            bar.update(len(finished))

        stylize_images(stylizer, images, ImageOptions.from_args(args), done)
    return todo


def _check_regions_backend(stylizer) -> None:
    """Regions with several styles need a backend that takes per-pixel style maps: say so before any output."""
    from instyle import masks

    regions = stylizer.regions
    if regions is None or masks.distinct_styles(regions.mixes) < 2:
        return
    if not stylizer.takes_style_map and not isinstance(stylizer.tile, int):
        raise UsageError(f"--backend {stylizer.backend} cannot take per-pixel style maps (--regions with several "
                         "styles); use --backend eager (or onnxruntime)")


def _run_ray(args, todo: list[Job], kwargs) -> list[Job]:
    """Stylize `todo` on Ray Data; outcomes are printed in input order as they arrive."""
    from instyle import checkpoint

    path, named = checkpoint.resolve_style(args.model)
    if named is not None and kwargs["style"] is None and kwargs["mix"] is None:
        kwargs = dict(kwargs, style=named)
    # Prove the model file and the style controls here, once, before any worker starts (exit 2 on a bad --style).
    _load(path, dict(kwargs, backend="eager", precision="fp32", device="cpu", tile="off", options={}))
    for job in distributed.stylize(todo, model=path, stylizer_kwargs=kwargs, args=args):
        report([job])
    return todo
