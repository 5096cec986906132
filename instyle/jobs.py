"""The rules of `instyle stylize` for one input file, shared by the local loop and the Ray workers.

collect() expands INPUTs into jobs before any work: find_inputs() takes regular files only (each entry's stat is
checked before anything opens it: a FIFO, socket or device node is one warning/error line, never a hang; relative
paths kept; walking skips dot-files and -o itself), plan_outputs() maps them into -o (nothing escapes -o, no
output overwrites an input, two inputs never share one output: both are errors). prepare_out_dir() proves -o
usable; pending() applies skip-existing; stylize_images() measures, groups equal sizes into batches, reads,
stylizes and writes atomically. Per-file outcomes are recorded on the Job (`ok`, and `warning: PATH: ...` /
`error: PATH: cause` lines), never raised: whatever goes wrong with one file is that file's error, and the caller
prints the lines and sets the exit code (1 when any line is an error).
"""
from __future__ import annotations

import glob
import os
import sys
import tempfile
import unicodedata
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


def _real(path: Path) -> Path:
    """The path with symlinks resolved; never raises (a symlink loop stays as it is)."""
    return Path(os.path.realpath(path))


def _walk(folder: Path, skip: Path) -> list[Path]:
    """Entries with an image or video name under `folder`, sorted, without dot-files, dot-folders, symlinked
    folders or `skip`. Names only: what each entry is gets checked by the caller, before anything opens it."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _real(Path(root, d)) != skip)
        found += [Path(root, f) for f in files if not f.startswith(".") and _is_image(Path(f))]
    return sorted(found)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def input_line(path: Path, *, explicit: bool) -> str | None:
    """None when `path` is a regular file this process can read (decided on its stat, before any open); else the
    line to print: `error: PATH: cause`, or for an entry that is no file at all (a FIFO, a socket, a device node,
    a broken symlink) found by walking a folder or matching a glob, `warning: PATH: cause; skipped`."""
    from instyle import files

    bad = files.problem(path)
    if bad is None:
        return None
    return f"warning: {bad}; skipped" if bad.not_a_file and not explicit else f"error: {bad}"


def find_inputs(inputs: list[str], out_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Expand INPUTs (files, folders walked recursively, globs) into (source, path relative to -o) pairs, and
    warning/error lines for the entries that are not readable regular files and inputs that match nothing.
    Only regular files become sources; a FIFO, a socket or a device node is never opened."""
    found: list[tuple[Path, Path]] = []
    lines: list[str] = []
    out_real = _real(out_dir)

    def take(path: Path, rel: Path, explicit: bool) -> bool:
        line = input_line(path, explicit=explicit)
        if line:
            lines.append(line)
        else:
            found.append((path, rel))
        return line is None

    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            for f in _walk(path, out_real):
                take(f, f.relative_to(path), explicit=False)
        elif os.path.lexists(path):  # a file, or a FIFO, a device node, a broken symlink: take() tells them apart
            take(path, Path(path.name), explicit=True)
        elif glob.has_magic(arg):
            base = _glob_base(arg)
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            entries = [m for m in matches if not m.is_dir() and _is_image(m) and not _inside(_real(m), out_real)]
            if not [take(m, m.relative_to(base), explicit=False) for m in entries].count(True):
                lines.append(f"error: {arg}: no image files match")
        else:
            lines.append(f"error: {arg}: no such file or folder")
    return found, list(dict.fromkeys(lines))  # an entry matched by two globs is one line


def portable_key(path: Path) -> str:
    """What names one file on every common file system: case-insensitive (macOS, Windows; simple lower case) and
    insensitive to Unicode normalization (macOS), so a plan that holds here holds wherever the outputs go."""
    return unicodedata.normalize("NFC", str(path)).lower()


def output_path(rel: Path, fmt: str | None, keep_ext: bool = False) -> Path:
    """An image's output path for --format EXT: the extension replaced (a.jpg -> a.png), or with keep_ext the new
    one appended where it differs (a.jpg -> a.jpg.png), so that a.jpg and a.png can both be written."""
    if not fmt:
        return rel
    ext = "." + fmt.lstrip(".")
    return rel.with_name(rel.name + ext) if keep_ext and rel.suffix.lower() != ext.lower() else rel.with_suffix(ext)


@dataclass
class _Planned:
    src: Path
    dst: Path
    kept: Path  # its output with --keep-ext (for the hint)


def plan_outputs(found: list[tuple[Path, Path]], out_dir: Path, fmt: str | None,
                 keep_ext: bool = False) -> tuple[list[Job], list[str]]:
    """The output plan, made before any work: one Job per (source, relative path) pair, in order, and error lines.

    An output must stay inside -o and must not be an input. Two sources whose outputs are one file by
    portable_key (a.jpg and a.png with --format png, photo.JPG and photo.jpg) are both errors, each line naming the
    other, and neither is written: which of them the user wanted is theirs to say. The same file found twice (two
    globs, a glob and its path) is one job. Videos keep their names (--format is for images)."""
    from instyle.video import is_video

    out_real = _real(out_dir)
    inputs = {portable_key(_real(src)) for src, _ in found}
    groups: dict[str, list[_Planned]] = {}
    lines = []
    for src, rel in found:
        rel = Path(os.path.normpath(rel))
        if rel.is_absolute() or rel.parts[:1] == ("..",):
            lines.append(f"error: {src}: its output would land outside -o {out_dir} ({rel}); "
                         f"name the files without '..'")
            continue
        video = is_video(src)
        dst = out_dir / (rel if video else output_path(rel, fmt, keep_ext))
        key = _real(dst)
        if not _inside(key, out_real):
            lines.append(f"error: {src}: its output {dst} resolves to {key}, outside -o {out_dir} (a symlink?)")
        elif portable_key(key) in inputs:
            lines.append(f"error: {src}: output {dst} would overwrite an input; choose another -o")
        else:
            group = groups.setdefault(portable_key(key), [])
            if all(_real(p.src) != _real(src) for p in group):
                group.append(_Planned(src, dst, out_dir / (rel if video else output_path(rel, fmt, True))))
    jobs = []
    for group in groups.values():
        if len(group) == 1:
            jobs.append(Job(group[0].src, group[0].dst))
        else:
            lines += _collision_lines(group, hint_keep_ext=bool(fmt) and not keep_ext)
    return jobs, lines


def _collision_lines(group: list[_Planned], hint_keep_ext: bool) -> list[str]:
    """One error line per source of one output, naming the others."""
    resolves = hint_keep_ext and len({portable_key(p.kept) for p in group}) == len(group)
    hint = "rename one or use --keep-ext" if resolves else "rename one"
    lines = []
    for p in group:
        others = [q for q in group if q is not p]
        case = next((q.dst for q in others if str(q.dst) != str(p.dst)), None)
        where = f"{p.dst}, one file with {case} on macOS and Windows" if case else str(p.dst)
        lines.append(f"error: {p.src}: same output as {', '.join(str(q.src) for q in others)} ({where}); {hint}")
    return lines


def collect(inputs: list[str], out_dir: Path, fmt: str | None,
            keep_ext: bool = False) -> tuple[list[Job], list[str]]:
    """find_inputs then plan_outputs: the jobs (src -> dst) and every warning/error line, before any work."""
    found, lines = find_inputs(inputs, out_dir)
    jobs, planned = plan_outputs(found, out_dir, fmt, keep_ext)
    return jobs, lines + planned


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


def _reporting_warnings(lines: list[str], fn, path: Path, *args, **kwargs):
    """Call fn(path, ...). When it succeeds, what the decoders warned about on this thread (Python warnings,
    libtiff's messages: instyle.decoder_messages) is added to `lines` as `warning: PATH: ...`, one line each;
    when it fails, its error says it all."""
    from instyle import decoder_messages

    warned: list[str] = []
    c_lines: list[str] = []
    with decoder_messages.capture(warned, c_lines):
        result = fn(path, *args, **kwargs)
    messages = [text.strip().splitlines()[0] for text in warned if text.strip()]
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
