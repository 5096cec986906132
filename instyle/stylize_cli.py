"""`instyle stylize`: batch-stylize files, folders (recursive) and globs.

Outputs keep their paths relative to the folder or glob base they were found under, and always land inside
-o: a relative path that would climb out (a glob with `..`, a symlink inside -o) is that file's error.
Walking a folder skips dot-files, dot-folders and -o itself. -o is checked (a folder, writable) before any
work. Existing outputs are skipped unless --overwrite; every write is atomic; a bad file, whatever went
wrong with it, prints `error: PATH: cause` and the batch goes on; warnings (only the first frame of an
animated or multi-page file is stylized) print `warning: PATH: ...`. Exit code 0 when all succeeded, 1 when
any file failed, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from instyle import video_cli
from instyle.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from instyle.engine.backends import BACKENDS
    from instyle.io import DEFAULT_MAX_PIXELS

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (recursive) or globs")
    p.add_argument("-o", "--out-dir", default="stylized", help="output folder (default: ./stylized)")
    p.add_argument("--model", help="shipped style name or model file (.safetensors, pytorch/examples .pth)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--max-side", type=int, metavar="PX", help="downscale so the longer side is at most PX")
    size.add_argument("--scale", type=float, metavar="F", help="resize by factor F before stylizing")
    p.add_argument("--tile", default="auto", help="auto | off | tile side in pixels (exact tiled inference)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="stylize up to N equal-size images at once")
    p.add_argument("--format", metavar="EXT", help="output format (jpg, png, webp, ...); default: the input's")
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
    video_cli.add_arguments(p)


@dataclass
class Job:
    src: Path
    dst: Path
    size: tuple[int, int] = (0, 0)  # (width, height) to stylize at


def _is_image(path: Path) -> bool:
    """An image or video input by extension (videos go to video_cli)."""
    from instyle.io import IMAGE_EXTENSIONS
    from instyle.video import VIDEO_EXTENSIONS

    return path.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = [q for q in parts[: next(i for i, q in enumerate(parts) if glob.has_magic(q))]]
    return Path(*base) if base else Path(".")


def _walk(folder: Path, skip: Path) -> list[Path]:
    """Image files under `folder`, sorted, without dot-files, dot-folders, symlinked folders or `skip`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        found += [Path(root, f) for f in files if not f.startswith(".") and _is_image(Path(f))]
    return sorted(found)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collect(inputs: list[str], out_dir: Path, fmt: str | None) -> tuple[list[Job], list[str]]:
    """Expand inputs into jobs (src -> dst) and error lines for inputs that match nothing or would escape -o."""
    found: list[tuple[Path, Path]] = []  # (source, path relative to the output folder)
    errors = []
    out_real = out_dir.resolve()
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            found += [(f, f.relative_to(path)) for f in _walk(path, out_real)]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(arg):
            base = _glob_base(arg)
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            files = [m for m in matches if m.is_file() and _is_image(m) and not _inside(m.resolve(), out_real)]
            if not files:
                errors.append(f"error: {arg}: no image files match")
            found += [(f, f.relative_to(base)) for f in files]
        else:
            errors.append(f"error: {arg}: no such file or folder")
    from instyle.video import is_video

    jobs, seen = [], {}
    for src, rel in found:
        rel = Path(os.path.normpath(rel))
        if rel.is_absolute() or rel.parts[:1] == ("..",):
            errors.append(f"error: {src}: its output would land outside -o {out_dir} ({rel}); "
                          f"name the files without '..'")
            continue
        dst = out_dir / (rel.with_suffix("." + fmt.lstrip(".")) if fmt and not is_video(src) else rel)
        key = dst.resolve()
        if not _inside(key, out_real):
            errors.append(f"error: {src}: its output {dst} resolves to {key}, outside -o {out_dir} (a symlink?)")
        elif key == src.resolve():
            errors.append(f"error: {src}: output would overwrite the input; choose another -o")
        elif key in seen:
            if seen[key] != src.resolve():
                errors.append(f"error: {src}: output {dst} is also the output of {seen[key]}; use --format or -o")
        else:
            seen[key] = src.resolve()
            jobs.append(Job(src, dst))
    return jobs, errors


def prepare_out_dir(out_dir: Path) -> None:
    """Prove before any work that -o can take files (UsageError when it cannot); -o itself is created only
    when the first output is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a folder")
    existing = out_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"-o {out_dir}: cannot be created ({existing} is not a folder)")
    if existing != out_dir.absolute():
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"-o {out_dir}: cannot be created (no write permission in {existing})")
        return
    try:
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".instyle-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"-o {out_dir}: cannot write there ({e.strerror or e})") from None


def target_size(size: tuple[int, int], max_side: int | None, scale: float | None) -> tuple[int, int]:
    w, h = size
    if scale is not None:
        return max(1, round(w * scale)), max(1, round(h * scale))
    if max_side is not None and max(w, h) > max_side:
        f = max_side / max(w, h)
        return max(1, round(w * f)), max(1, round(h * f))
    return w, h


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
    if args.format:
        from instyle.io import ImageError, format_for

        try:
            format_for("x." + args.format.lstrip("."))
        except ImageError as e:
            raise UsageError(str(e).removeprefix("x." + args.format.lstrip(".") + ": ")) from None


def _stylizer_kwargs(args) -> dict:
    from instyle.engine.stylizer import parse_tile

    try:
        tile = parse_tile(args.tile)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    if not 0 <= args.strength <= 1:
        raise UsageError(f"--strength must be between 0 and 1, got {args.strength}")
    if not 0.1 <= args.style_scale <= 10:
        raise UsageError(f"--style-scale must be between 0.1 and 10, got {args.style_scale}")
    return dict(backend=args.backend, precision=args.precision, device=args.device, tile=tile,
                style=args.style, mix=parse_mix(args.mix) if args.mix else None, strength=args.strength,
                preserve_color=args.preserve_color, style_scale=args.style_scale)


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
    kwargs = _stylizer_kwargs(args)
    from tqdm import tqdm

    import instyle
    from instyle import io

    prepare_out_dir(Path(args.out_dir))
    jobs, errors = collect(args.inputs, Path(args.out_dir), args.format)
    for line in errors:
        print(line, file=sys.stderr)
    failed = len(errors)
    todo = [j for j in jobs if args.overwrite or not j.dst.exists()]
    skipped = len(jobs) - len(todo)
    if not todo:
        if skipped:
            print(f"nothing to do: {skipped} output(s) exist (use --overwrite)", file=sys.stderr)
            return 1 if failed else 0
        if not failed:
            print(f"error: no image files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    from instyle.models.styles import StyleError

    try:
        stylizer = instyle.load(args.model, **kwargs)
    except StyleError as e:
        raise UsageError(f"--style/--mix: {e}") from None
    from instyle.video import is_video

    videos = [j for j in todo if is_video(j.src)]
    todo = [j for j in todo if j not in videos]
    done, video_failed = video_cli.stylize_jobs(stylizer, videos, args, target_size)
    failed += video_failed
    # Group equal-size images into batches; the header read also catches unreadable files early.
    groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for job in todo:
        try:
            job.size = target_size(_reporting_warnings(io.image_size, job.src), args.max_side, args.scale)
        except io.ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        w, h = job.size
        if w * h > args.max_pixels:  # the limit guards memory, so it holds for what is stylized, too
            print(f"error: {job.src}: {w}x{h} = {w * h} pixels to stylize (after --scale/--max-side) is over the "
                  f"limit of {args.max_pixels}; raise it with --max-pixels", file=sys.stderr)
            failed += 1
            continue
        groups[job.size].append(job)
    batches = [g[i:i + args.batch] for g in groups.values() for i in range(0, len(g), args.batch)]
    with tqdm(total=sum(map(len, batches)), unit="img", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        for batch in batches:
            ok = _stylize_batch(stylizer, batch, args)
            done += ok
            failed += len(batch) - ok
            bar.update(len(batch))
    summary = f"{done} stylized, {skipped} skipped (exist), {failed} failed -> {args.out_dir}"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


@contextlib.contextmanager
def _c_stderr(lines: list[str]):
    """Collect what C libraries write straight to file descriptor 2 (libtiff does) while the block runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to borrow: let it through
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines += tmp.read(4096).decode("utf-8", "replace").splitlines()


def _reporting_warnings(fn, path: Path, *args, **kwargs):
    """Call fn(path, ...). When it succeeds, what the decoders warned about (Python warnings, libtiff's messages
    on stderr) prints as `warning: PATH: ...`, one line each; when it fails, its error line says it all."""
    c_lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught, _c_stderr(c_lines):
        warnings.simplefilter("always")
        result = fn(path, *args, **kwargs)
    messages = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    messages += [line.strip().removeprefix("tempfile.tif: ") for line in c_lines if line.strip()]
    for line in list(dict.fromkeys(messages))[:3]:
        print(f"warning: {path}: {line[:200]}", file=sys.stderr)
    return result


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _stylize_batch(stylizer, batch: list[Job], args) -> int:
    """Read, stylize and write one batch; per-file errors are printed. Returns the number written.

    Anything that goes wrong with one file (a decoder's TypeError, MemoryError while tiling, ...) is that
    file's error line; KeyboardInterrupt and SIGTERM end the run (temporary files are removed on the way).
    """
    from instyle import io

    pictures, ready = [], []
    for job in batch:
        try:
            pic = _reporting_warnings(io.read_image, job.src, max_pixels=args.max_pixels)
            if pic.frames > 1:
                print(f"warning: {job.src}: {pic.frames} frames; only the first is stylized", file=sys.stderr)
            if pic.size != job.size:
                pic = io.resize_picture(pic, job.size)
            pictures.append(pic)
            ready.append(job)
        except io.ImageError as e:
            print(f"error: {e}", file=sys.stderr)
        except Exception as e:
            print(f"error: {job.src}: cannot read ({_one_line(e)})", file=sys.stderr)
    if not ready:
        return 0
    try:
        out = stylizer(io.to_tensor(pictures))
    except Exception as e:  # CUDA OOM, MemoryError/OverflowError while tiling, a backend's RuntimeError
        for job in ready:
            print(f"error: {job.src}: stylizing failed ({_one_line(e)})", file=sys.stderr)
        return 0
    written = 0
    for job, pic, y in zip(ready, pictures, out):
        try:
            io.write_image(job.dst, io.Picture(io.rgb_from_tensor(y), pic.alpha, pic.icc_profile),
                           quality=args.quality)
            written += 1
        except io.ImageError as e:
            print(f"error: {e}", file=sys.stderr)
        except Exception as e:
            print(f"error: {job.dst}: cannot write ({_one_line(e)})", file=sys.stderr)
    return written
