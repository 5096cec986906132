"""The video half of `instyle stylize`: its flags, and the loop that sends video inputs to instyle.video.

stylize_cli finds the inputs, applies naming/skip/overwrite rules and loads the Stylizer once; every input
that is a video (instyle.video.is_video) comes here. A bad video prints `error: PATH: cause` and the
batch goes on.
"""
from __future__ import annotations

import argparse
import sys

from instyle.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video inputs (mp4, mov, mkv, webm, avi, animated gif)")
    g.add_argument("--codec", help="video encoder (default: libx264 where PyAV has it, libvpx-vp9 for .webm)")
    g.add_argument("--crf", type=int, metavar="N",
                   help="constant quality for x264/x265/VP9/AV1 (default: visually lossless, x264 18)")
    g.add_argument("--frames", metavar="A:B", help="stylize only frames A..B-1 (A: or :B work too)")
    g.add_argument("--temporal", type=float, nargs="?", const=0.5, metavar="W",
                   help="flicker reduction: blend with the previous output warped by optical flow, weight W "
                        "(default 0.5; needs opencv-python-headless)")


def validate(args) -> None:
    from instyle.video import parse_frames

    if args.frames is not None:
        try:
            args.frames = parse_frames(args.frames)
        except ValueError as e:
            raise UsageError(f"--{e}") from None
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise UsageError(f"--crf must be in 0..63, got {args.crf}")
    if args.temporal is not None and not 0 <= args.temporal < 1:
        raise UsageError(f"--temporal weight must be in [0, 1), got {args.temporal}")


def stylize_jobs(stylizer, jobs: list, args, target_size) -> None:
    """Stylize each video job (src -> dst) in turn, printing its warning/error lines when it is done."""
    from tqdm import tqdm

    from instyle.jobs import report

    for job in jobs:
        with tqdm(unit="frame", desc=job.src.name, disable=not sys.stderr.isatty(), file=sys.stderr,
                  leave=False) as bar:
            stylize_one(stylizer, job, args, target_size, bar)
        report([job])


def stylize_one(stylizer, job, args, target_size, bar=None) -> None:
    """Stylize one video job, recording the outcome on it (`ok`, `warning:`/`error:` lines); `bar` (a tqdm, or
    None) gets the frame total and each frame. The Ray workers call this too: one video per task."""
    from instyle import video

    if not video.have_av():
        job.lines.append(f"error: {job.src}: video input needs PyAV: pip install 'instyle[video]'")
        return
    try:  # whatever goes wrong with one video (a damaged container's metadata included) is that file's error
        total = video.frame_count(job.src)
        if total and args.frames:
            start, stop = args.frames
            total = max(0, min(total, stop or total) - start)
        if bar is not None:
            bar.reset(total=total)
        temporal = None
        if args.temporal:
            from instyle.temporal import FlowBlend

            temporal = FlowBlend(args.temporal)
        result = video.stylize_video(
            stylizer, job.src, job.dst, batch=args.batch, codec=args.codec, crf=args.crf,
            frames=args.frames, size=lambda w, h: target_size((w, h), args.max_side, args.scale),
            temporal=temporal, progress=bar.update if bar is not None else None)
    except video.VideoError as e:
        job.lines.append(f"error: {str(e).splitlines()[0]}")
        return
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        job.lines.append(f"error: {job.src}: {msg}")
        return
    job.lines += [f"warning: {job.src}: {note}" for note in result.notes]
    job.ok = True
