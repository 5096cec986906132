"""`instyle stylize clip.mp4`: streamed video in, stylized video out, audio copied, frames as the image path.

Clips are made here with PyAV from crops of a real photo (a slow pan) plus a sine-tone audio track.
"""
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av", reason="PyAV not installed: pip install 'instyle[video]'")

import instyle  # noqa: E402
from instyle import video  # noqa: E402
from instyle.cli import main  # noqa: E402
from instyle.metrics import psnr_db  # noqa: E402

FPS = Fraction(24000, 1001)  # 23.976: not the 30 fps that tools like to assume


@pytest.fixture(scope="module")
def photo(data):
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def stylizer(model_path):
    return instyle.load(str(model_path), backend="eager", device="cpu", precision="fp32", tile="off")


def make_clip(path, photo, *, frames=12, size=(96, 64), rate=FPS, audio="aac", pts=None, rotation=0,
              codec="libx264", faststart=False):
    """A pan over `photo` (3 px right, 1 px down per frame); AAC/Opus sine tone; optional custom pts (VFR)."""
    w, h = size
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as c:
        v = c.add_stream(codec, rate=rate, options={"crf": "10", "b": "0"} if "vpx" in codec else {"crf": "10"})
        v.width, v.height = w, h
        v.pix_fmt = "yuv444p" if w % 2 or h % 2 else "yuv420p"
        if pts is not None:
            v.codec_context.time_base = v.time_base = Fraction(1, 1000)
        if rotation:
            v.set_display_rotation(rotation)
        a = c.add_stream(audio, rate=48000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(frames):
            crop = np.ascontiguousarray(photo[40 + i:40 + i + h, 60 + 3 * i:60 + 3 * i + w])
            f = av.VideoFrame.from_ndarray(crop, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            else:
                f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            n, t0 = 960, 0
            seconds = frames / float(rate) if pts is None else (pts[-1] + 40) / 1000
            while t0 < seconds * 48000:
                tone = 0.3 * np.sin(2 * np.pi * 440 * (t0 + np.arange(n)) / 48000).astype(np.float32)
                af = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, t0
                for p in a.encode(af):
                    c.mux(p)
                t0 += n
            for p in a.encode(None):
                c.mux(p)
    return path


def probe(path):
    """(video frames as RGB arrays, frame times in s, stream info, audio packets' bytes, rotation)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = dict(rate=v.average_rate, size=(v.width, v.height), pix_fmt=v.codec_context.pix_fmt,
                    time_base=v.time_base, duration=c.duration / 1e6,
                    n_audio=len(c.streams.audio), order=[s.type for s in c.streams])
        frames, times, rotation = [], [], 0
        for f in c.decode(v):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
            rotation = f.rotation
    audio = []
    with av.open(str(path)) as c:
        if c.streams.audio:
            audio = [(bytes(p), p.pts) for p in c.demux(c.streams.audio[0]) if p.dts is not None]
    return frames, times, info, audio, rotation


def stylize(*args):
    batch = [] if "--batch" in args else ["--batch", "4"]  # fewer, larger forwards: the tests' CPU time
    return main(["stylize", *map(str, args), "--backend", "eager", "--device", "cpu", "--precision", "fp32", *batch])


def reference(stylizer, frames):
    """The image path's result: the Stylizer run directly on the decoded input frames."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    y = stylizer(x).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(y)


@pytest.mark.parametrize("size", [(96, 64), (97, 65)], ids=["even", "odd"])
def test_clip_keeps_timing_size_audio_and_matches_image_path(tmp_path, photo, model_path, stylizer, size):
    src = make_clip(tmp_path / "clip.mp4", photo, size=size)
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path, "--batch", "4") == 0
    out = tmp_path / "out" / "clip.mp4"
    f_in, t_in, info_in, audio_in, _ = probe(src)
    f_out, t_out, info_out, audio_out, _ = probe(out)
    assert len(f_out) == len(f_in) == 12
    assert info_out["rate"] == FPS and info_out["size"] == size and info_out["time_base"] == info_in["time_base"]
    assert abs(info_out["duration"] - info_in["duration"]) <= 1 / FPS
    assert np.allclose(t_out, t_in, atol=1e-3), (t_in, t_out)
    assert info_out["n_audio"] == 1 and audio_out == audio_in, "audio packets must be copied bit for bit"
    assert info_out["order"] == info_in["order"] and info_out["pix_fmt"] == info_in["pix_fmt"]
    for i, (got, ref) in enumerate(zip(f_out, reference(stylizer, f_in))):
        assert psnr_db(got, ref) >= 30, f"frame {i}: {psnr_db(got, ref):.1f} dB"
    assert not list((tmp_path / "out").glob(".*tmp*")), "no temp file left behind"


def test_variable_frame_rate_opus_and_rotation_kept(tmp_path, photo, model_path):
    pts = [0, 40, 120, 140, 200, 290, 330, 400]
    src = make_clip(tmp_path / "vfr.mkv", photo, frames=len(pts), pts=pts, audio="libopus", rotation=90)
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path) == 0
    _, t_in, _, audio_in, rot_in = probe(src)
    _, t_out, _, audio_out, rot_out = probe(tmp_path / "out" / "vfr.mkv")
    assert np.allclose(t_out, t_in, atol=1e-3) and np.allclose(t_in, np.array(pts) / 1000)
    assert audio_out == audio_in and len(audio_in) > 0
    assert rot_in == rot_out == 90


def test_frame_range(tmp_path, photo, model_path, stylizer):
    src = make_clip(tmp_path / "clip.mp4", photo)
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path, "--frames", "3:9") == 0
    f_in, t_in, _, audio_in, _ = probe(src)
    f_out, t_out, _, audio_out, _ = probe(tmp_path / "out" / "clip.mp4")
    assert len(f_out) == 6
    assert np.allclose(np.array(t_out) - t_out[0], np.array(t_in[3:9]) - t_in[3], atol=1e-3)
    span = 6 / float(FPS)
    assert audio_out and set(b for b, _ in audio_out) <= set(b for b, _ in audio_in)
    assert abs(len(audio_out) * 960 / 48000 - span) <= 2 * 960 / 48000  # the range's audio, packet-exact
    for got, ref in zip(f_out, reference(stylizer, f_in[3:9])):  # output frame k = input frame 3 + k
        assert psnr_db(got, ref) >= 30
    assert stylize(src, "-o", tmp_path / "none", "--model", model_path, "--frames", "50:60") == 1
    assert not (tmp_path / "none" / "clip.mp4").exists()
    assert stylize(src, "-o", tmp_path / "none", "--model", model_path, "--frames", "9:3") == 2  # usage error


def test_corrupt_video_fails_alone_and_mixed_inputs_work(tmp_path, photo, model_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "good.mp4", photo)
    make_clip(src / "old.avi", photo, audio=None)  # AVI: no timestamps, B-frames: frames numbered at the rate
    data = (src / "good.mp4").read_bytes()
    (src / "bad.mp4").write_bytes(data[: len(data) // 3])  # truncated: the index (at the end) is gone
    make_clip(tmp_path / "fast.mp4", photo, faststart=True)
    data = (tmp_path / "fast.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) // 2])  # index first, half the frames' data gone
    (src / "junk.mov").write_bytes(b"not a video at all" * 100)
    Image.fromarray(photo[:40, :56]).save(src / "still.png")
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path, "--format", "jpg") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1].strip() for e in errors] == [str(src / n) for n in ("bad.mp4", "cut.mp4", "junk.mov")]
    assert all("\n" not in e and "Traceback" not in err for e in errors)
    assert (tmp_path / "out" / "good.mp4").exists() and (tmp_path / "out" / "still.jpg").exists()
    f_avi, _, info, _, _ = probe(tmp_path / "out" / "old.avi")  # (AVI frame times: the rate, not stored)
    assert len(f_avi) == 12 and info["rate"] == FPS
    assert not any((tmp_path / "out" / n).exists() for n in ("bad.mp4", "cut.mp4", "junk.mov"))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_exception_mid_encode_leaves_no_output(tmp_path, photo, stylizer):
    src = make_clip(tmp_path / "clip.mp4", photo)
    calls = []

    def interrupted(x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return stylizer(x)

    with pytest.raises(KeyboardInterrupt):
        video.stylize_video(interrupted, src, tmp_path / "out" / "clip.mp4", batch=4)
    assert list((tmp_path / "out").iterdir()) == []

    def failing_filter(src_rgb, styl):  # runs on the writer thread: its error must reach the caller
        raise MemoryError("temporal filter failed")

    with pytest.raises(MemoryError):
        video.stylize_video(stylizer, src, tmp_path / "out" / "clip.mp4", batch=4, temporal=failing_filter)
    assert list((tmp_path / "out").iterdir()) == []


def test_skip_existing_and_temporal(tmp_path, photo, model_path, stylizer, capsys):
    pytest.importorskip("cv2", reason="--temporal needs opencv-python-headless")
    src = make_clip(tmp_path / "clip.webm", photo, audio="libopus", codec="libvpx-vp9")
    out = tmp_path / "out" / "clip.webm"
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path, "--temporal") == 0
    first = out.stat().st_mtime_ns
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path) == 0
    assert out.stat().st_mtime_ns == first and "exist" in capsys.readouterr().err
    f_out, _, info, _, _ = probe(out)
    assert len(f_out) == 12 and info["n_audio"] == 1


def test_animated_gif_is_a_video_and_a_still_gif_an_image(tmp_path, photo, model_path, stylizer):
    crops = [Image.fromarray(np.ascontiguousarray(photo[40 + i:104 + i, 60 + 3 * i:156 + 3 * i])) for i in range(6)]
    crops[0].save(tmp_path / "anim.gif", save_all=True, append_images=crops[1:], duration=[80, 120, 80, 80, 60, 80])
    crops[0].save(tmp_path / "still.gif")
    assert video.is_video(tmp_path / "anim.gif") and not video.is_video(tmp_path / "still.gif")
    assert stylize(tmp_path / "anim.gif", tmp_path / "still.gif", "-o", tmp_path / "out", "--model", model_path) == 0
    f_in, t_in, _, _, _ = probe(tmp_path / "anim.gif")
    f_out, t_out, _, _, _ = probe(tmp_path / "out" / "anim.gif")
    assert len(f_out) == 6 and np.allclose(t_out, t_in)  # per-frame delays kept
    for got, ref in zip(f_out, reference(stylizer, f_in)):
        assert psnr_db(got, ref) >= 30  # a 256-colour palette per frame
    assert Image.open(tmp_path / "out" / "still.gif").size == (96, 64)


def test_flow_blend_reduces_flicker_on_a_pan(tmp_path, photo, stylizer):
    pytest.importorskip("cv2", reason="--temporal needs opencv-python-headless")
    from instyle.bench.video_temporal import gt_flicker
    from instyle.temporal import FlowBlend

    f_in, _, _, _, _ = probe(make_clip(tmp_path / "clip.mp4", photo, audio=None))
    off = reference(stylizer, f_in)
    blend = FlowBlend(0.5)
    on = [blend(x, y) for x, y in zip(f_in, off)]
    assert np.array_equal(on[0], off[0])  # nothing to blend with yet
    # the pan moves 3 px right and 1 px down per frame: the true motion, not the method's own flow
    assert gt_flicker(on, 3, 1) < 0.7 * gt_flicker(off, 3, 1)
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(on, off)]) < gt_flicker(off, 3, 1)
