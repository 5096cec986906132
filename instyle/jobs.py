"""The rules of `instyle stylize` for one input file, shared by the local loop and the Ray workers.

collect() expands INPUTs into jobs (src -> dst inside -o: relative paths kept, nothing escapes -o, walking skips
dot-files and -o itself); prepare_out_dir() proves -o usable before any work; pending() applies skip-existing;
stylize_images() measures, groups equal sizes into batches, reads, stylizes and writes atomically. Per-file
outcomes are recorded on the Job (`ok`, and `warning: PATH: ...` / `error: PATH: cause` lines), never raised:
whatever goes wrong with one file is that file's error, and the caller prints the lines and sets the exit code.
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from instyle.errors import UsageError


@dataclass
class Job:
    """One input file and its output; `lines` and `ok` are what stylizing it reported."""

    src: Path
    dst: Path
    size: tuple[int, int] = (0, 0)  # (width, height) to stylize at
    lines: list[str] = field(default_factory=list)  # `warning: ...` / `error: ...` lines about this file, in order
    ok: bool = False  # its output was written


@dataclass(frozen=True)
class ImageOptions:
    """What the per-file work needs from the command line (picklable: Ray workers get a copy)."""

    max_side: int | None = None
    scale: float | None = None
    max_pixels: int = 2 ** 28
    quality: int = 95
    batch: int = 1

    @classmethod
    def from_args(cls, args) -> ImageOptions:
        return cls(args.max_side, args.scale, args.max_pixels, args.quality, args.batch)


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


def pending(jobs: list[Job], overwrite: bool) -> tuple[list[Job], int]:
    """The jobs to run (all with `overwrite`, else those whose output does not exist) and how many are skipped."""
    todo = [j for j in jobs if overwrite or not j.dst.exists()]
    return todo, len(jobs) - len(todo)


def measure(job: Job, opts: ImageOptions) -> bool:
    """Read `job`'s header and set the size to stylize at; False (and an error line) when it cannot be stylized.

    The pixel limit guards memory, so it holds for what is stylized too (after --scale/--max-side)."""
    from instyle import io

    try:
        job.size = target_size(_reporting_warnings(job.lines, io.image_size, job.src), opts.max_side, opts.scale)
    except io.ImageError as e:
        job.lines.append(f"error: {e}")
        return False
    w, h = job.size
    if w * h > opts.max_pixels:
        job.lines.append(f"error: {job.src}: {w}x{h} = {w * h} pixels to stylize (after --scale/--max-side) is "
                         f"over the limit of {opts.max_pixels}; raise it with --max-pixels")
        return False
    return True


def stylize_images(stylizer, jobs: list[Job], opts: ImageOptions,
                   done: Callable[[list[Job]], None] = lambda finished: None) -> None:
    """Stylize image jobs: measure each (the header read catches unreadable files early), group equal sizes into
    batches of `opts.batch`, then read, stylize and write each batch. `done` is called with every group of
    finished jobs: first those that failed to measure, then each batch."""
    groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
    refused = []
    for job in jobs:
        (groups[job.size] if measure(job, opts) else refused).append(job)
    if refused:
        done(refused)
    for group in groups.values():
        for i in range(0, len(group), opts.batch):
            batch = group[i:i + opts.batch]
            stylize_batch(stylizer, batch, opts)
            done(batch)


def report(jobs: Iterable[Job], file=None) -> None:
    """Print each job's warning/error lines (on stderr by default)."""
    for job in jobs:
        for line in job.lines:
            print(line, file=file or sys.stderr)


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


def _reporting_warnings(lines: list[str], fn, path: Path, *args, **kwargs):
    """Call fn(path, ...). When it succeeds, what the decoders warned about (Python warnings, libtiff's messages
    on stderr) is added to `lines` as `warning: PATH: ...`, one line each; when it fails, its error says it all."""
    c_lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught, _c_stderr(c_lines):
        warnings.simplefilter("always")
        result = fn(path, *args, **kwargs)
    messages = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    messages += [line.strip().removeprefix("tempfile.tif: ") for line in c_lines if line.strip()]
    for line in list(dict.fromkeys(messages))[:3]:
        lines.append(f"warning: {path}: {line[:200]}")
    return result


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def read_job(job: Job, opts: ImageOptions):
    """Read `job`'s image and resize it to `job.size`; None (and an error line) when it cannot be read."""
    from instyle import io

    try:
        pic = _reporting_warnings(job.lines, io.read_image, job.src, max_pixels=opts.max_pixels)
        if pic.frames > 1:
            job.lines.append(f"warning: {job.src}: {pic.frames} frames; only the first is stylized")
        return io.resize_picture(pic, job.size) if pic.size != job.size else pic
    except io.ImageError as e:
        job.lines.append(f"error: {e}")
    except Exception as e:
        job.lines.append(f"error: {job.src}: cannot read ({_one_line(e)})")
    return None


def write_job(job: Job, pic, y, opts: ImageOptions) -> None:
    """Write the stylized tensor `y` (C,H,W) with `pic`'s alpha and ICC profile to `job.dst`, atomically."""
    from instyle import io

    try:
        io.write_image(job.dst, io.Picture(io.rgb_from_tensor(y), pic.alpha, pic.icc_profile), quality=opts.quality)
        job.ok = True
    except io.ImageError as e:
        job.lines.append(f"error: {e}")
    except Exception as e:
        job.lines.append(f"error: {job.dst}: cannot write ({_one_line(e)})")


def stylize_batch(stylizer, batch: list[Job], opts: ImageOptions) -> None:
    """Read, stylize and write one batch of equal-size images, recording each file's outcome on its Job.

    Anything that goes wrong with one file (a decoder's TypeError, MemoryError while tiling, ...) is that
    file's error line; KeyboardInterrupt and SIGTERM end the run (temporary files are removed on the way).
    """
    from instyle import io

    pictures = [read_job(job, opts) for job in batch]
    ready = [(job, pic) for job, pic in zip(batch, pictures) if pic is not None]
    if not ready:
        return
    try:
        out = stylizer(io.to_tensor([pic for _, pic in ready]))
    except Exception as e:  # CUDA OOM, MemoryError/OverflowError while tiling, a backend's RuntimeError
        for job, _ in ready:
            job.lines.append(f"error: {job.src}: stylizing failed ({_one_line(e)})")
        return
    for (job, pic), y in zip(ready, out):
        write_job(job, pic, y, opts)
