"""`instyle stylize` takes regular files only and never lets two inputs share one output.

Entries that are no file (a FIFO, a socket, a device node, a broken symlink) are one line each and never opened:
every in-process test here runs under an alarm, so a blocking open fails the test instead of hanging it, and the
fuzz test runs the CLI in a child process with a hard timeout. Unreadable files: mode 000 refuses nobody when the
tests run as root, so those run in a child that gives up root's permission override (see `_child_kwargs`).
"""
import ctypes
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instyle import files, io, jobs
from instyle.cli import main

ALARM_S = 60  # far above any of these runs; only a hang reaches it


@pytest.fixture(autouse=True)
def no_hang():
    """Fail (SIGALRM raises) instead of hanging when something blocks, on a FIFO say."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for {ALARM_S} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(ALARM_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def photo(data):
    with Image.open(data / "content" / "demo" / "chicago.jpg") as img:
        return img.convert("RGB").crop((100, 80, 100 + 23, 80 + 17))  # odd sizes


@pytest.fixture
def sockets():
    """Bind Unix sockets at the paths given; closed at the end."""
    made = []

    def bind(path: Path) -> Path:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        made.append(s)
        return path

    yield bind
    for s in made:
        s.close()


def stylize(*args):
    return main(["stylize", *map(str, args), "--backend", "eager", "--device", "cpu"])


def lines(capsys, prefix=("error: ", "warning: ")):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(prefix)]


def make_entry(kind: str, path: Path, bind) -> Path:
    """An entry of `kind` at `path` that is not a regular file."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        bind(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")  # a walked folder holds device nodes through symlinks
    elif kind == "broken symlink":
        path.symlink_to(path.parent / "gone.png")
    else:
        path.symlink_to(path.name)  # a loop
    return path


KINDS = {"fifo": "a FIFO", "socket": "a socket", "device": "a character device",
         "broken symlink": "a broken symlink", "symlink loop": "a symlink loop"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_entry_that_is_no_file_is_one_line_in_a_folder_or_given(tmp_path, photo, model_path, capsys, sockets,
                                                                    kind):
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "good.png")
    bad = make_entry(kind, src / "bad.png", sockets)
    assert stylize(src, "-o", tmp_path / "out", "--model", model_path) == 0  # walked: skipped, not a failure
    assert lines(capsys) == [f"warning: {bad}: not a regular file ({KINDS[kind]}); skipped"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]
    assert stylize(bad, src / "good.png", "-o", tmp_path / "out2", "--model", model_path) == 1  # given: an error
    assert lines(capsys) == [f"error: {bad}: not a regular file ({KINDS[kind]})"]
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["good.png"]


@pytest.mark.parametrize("node", ["/dev/null", "/dev/zero"])
def test_a_device_node_given_is_an_error_and_never_read(tmp_path, photo, model_path, capsys, node):
    photo.save(tmp_path / "good.jpg")
    assert stylize(node, tmp_path / "good.jpg", "-o", tmp_path / "out", "--model", model_path) == 1
    assert lines(capsys) == [f"error: {node}: not a regular file (a character device)"]
    assert (tmp_path / "out" / "good.jpg").is_file()


def test_globs_matching_fifos_warn_once_and_the_batch_goes_on(tmp_path, photo, model_path, capsys):
    photo.save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    assert stylize(tmp_path / "*.png", tmp_path / "?.png", "-o", tmp_path / "out", "--model", model_path) == 0
    assert lines(capsys) == [f"warning: {tmp_path / 'b.png'}: not a regular file (a FIFO); skipped"]
    assert (tmp_path / "out" / "a.png").is_file()


def test_the_readers_refuse_what_is_no_file_without_blocking(tmp_path, monkeypatch):
    """The CLI checks before reading; the readers check again (a path may change between the two)."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    for read in (io.image_size, io.read_image):
        for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
            with pytest.raises(io.ImageError, match=f"^{path}: not a regular file \\({kind}\\)$"):
                read(path)
    # the race itself: the stat says "regular file", the open finds a FIFO; O_NONBLOCK keeps it from waiting
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: regular if Path(p) == fifo else real_stat(p, *a, **k))
    with pytest.raises(files.InputFileError, match="not a regular file \\(a FIFO\\)"):
        files.open_regular(fifo)


def test_the_video_path_refuses_what_is_no_file_without_blocking(tmp_path):
    av = pytest.importorskip("av", reason="PyAV not installed")  # noqa: F841
    from instyle import video

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "anim.gif")
    assert video.frame_count(fifo) is None and not video.is_video(tmp_path / "anim.gif")
    with pytest.raises(video.VideoError, match="clip.mp4: not a regular file \\(a FIFO\\)"):
        video.stylize_video(lambda x: x, fifo, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


# --- unreadable files: a child process, so that mode 000 means "unreadable" for root too ---

def _give_up_read_override():
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set; root's next exec starts
    without them, so permissions hold for it as for anyone. Exit 97 when the system does not let us."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(97)


def _child_kwargs() -> dict:
    return {"preexec_fn": _give_up_read_override} if os.geteuid() == 0 else {}


def _can_make_unreadable(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    code = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], capture_output=True,
                          **_child_kwargs()).returncode
    probe.unlink()
    return code == 1


def _cli(*args, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "instyle", "stylize", *map(str, args), "--backend", "eager",
                           "--device", "cpu"], capture_output=True, text=True, timeout=timeout, **_child_kwargs())


def test_an_unreadable_file_is_an_error_in_a_folder_and_given(tmp_path, photo, model_path):
    if not _can_make_unreadable(tmp_path):
        pytest.skip("cannot run a child without root's permission override here (prctl refused)")
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "good.png")
    photo.save(src / "locked.png")
    (src / "locked.png").chmod(0)
    run = _cli(src, src / "locked.png", "-o", tmp_path / "out", "--model", model_path, timeout=120)
    assert run.returncode == 1, run.stderr
    assert [x for x in run.stderr.splitlines() if x.startswith(("error:", "warning:"))] == [
        f"error: {src / 'locked.png'}: unreadable (Permission denied)"]  # the same entry twice: one line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


# --- two inputs, one output ---

def test_extension_collision_is_two_errors_and_keep_ext_writes_both(tmp_path, photo, model_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "a.jpg", quality=95)
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "a.png")
    photo.save(src / "b.png")
    out = tmp_path / "out"
    assert stylize(src, "-o", out, "--model", model_path, "--format", "png") == 1
    a_jpg, a_png = src / "a.jpg", src / "a.png"
    assert lines(capsys) == [
        f"error: {a_jpg}: same output as {a_png} ({out / 'a.png'}); rename one or use --keep-ext",
        f"error: {a_png}: same output as {a_jpg} ({out / 'a.png'}); rename one or use --keep-ext"]
    assert [p.name for p in out.iterdir()] == ["b.png"], "neither of the two is written"

    assert stylize(src, "-o", out, "--model", model_path, "--format", "png", "--keep-ext") == 0
    assert lines(capsys) == []
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png", "b.png"]
    for name, alone in (("a.jpg.png", a_jpg), ("a.png", a_png)):  # each is what its input gives on its own
        assert stylize(alone, "-o", tmp_path / "alone", "--model", model_path, "--format", "png") == 0
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(tmp_path / "alone" / "a.png")))
        (tmp_path / "alone" / "a.png").unlink()


def test_names_differing_only_in_case_collide_everywhere(tmp_path, photo, model_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "photo.JPG", format="JPEG")
    photo.save(src / "photo.jpg")
    photo.save(src / "other.jpg")
    out = tmp_path / "out"
    assert stylize(src, "-o", out, "--model", model_path, "--keep-ext") == 1
    upper, lower = src / "photo.JPG", src / "photo.jpg"
    assert lines(capsys) == [
        f"error: {upper}: same output as {lower} ({out / 'photo.JPG'}, one file with {out / 'photo.jpg'} on macOS "
        f"and Windows); rename one",  # --keep-ext would not help: no hint to use it
        f"error: {lower}: same output as {upper} ({out / 'photo.jpg'}, one file with {out / 'photo.JPG'} on macOS "
        f"and Windows); rename one"]
    assert [p.name for p in out.iterdir()] == ["other.jpg"]


def test_the_same_file_through_globs_and_its_path_is_one_job(tmp_path, photo, model_path, capsys):
    photo.save(tmp_path / "a.png")
    assert stylize(tmp_path / "*.png", tmp_path / "a*", tmp_path / "a.png", "-o", tmp_path / "out",
                   "--model", model_path) == 0
    err = capsys.readouterr().err
    assert "error" not in err and "1 stylized, 0 skipped (exist), 0 failed" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_an_output_that_is_another_input_is_an_error(tmp_path, photo, model_path, capsys):
    photo.save(tmp_path / "a.jpg")
    photo.save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    assert stylize(tmp_path / "a.jpg", tmp_path / "a.png", "-o", tmp_path, "--model", model_path,
                   "--format", "png") == 1
    assert lines(capsys) == [f"error: {tmp_path / name}: output {tmp_path / 'a.png'} would overwrite an input; "
                             f"choose another -o" for name in ("a.jpg", "a.png")]
    assert (tmp_path / "a.png").read_bytes() == before


def test_video_outputs_follow_the_same_plan(tmp_path, photo):
    """An animated GIF (a video: its name is kept) and a still PNG turned into a GIF; clip.mp4 beside clip.MP4."""
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=40)
    photo.save(tmp_path / "clip.png")
    for name in ("movie.mp4", "movie.MP4"):  # the plan never opens a container
        (tmp_path / name).write_bytes(b"not read")
    out = tmp_path / "out"
    found, warned = jobs.find_inputs([str(tmp_path)], out)
    assert warned == []
    planned, errors = jobs.plan_outputs(found, out, "gif")
    assert planned == [] and len(errors) == 4
    assert errors[0].startswith(f"error: {tmp_path / 'clip.gif'}: same output as {tmp_path / 'clip.png'} "
                                f"({out / 'clip.gif'}); rename one or use --keep-ext")
    assert errors[2].startswith(f"error: {tmp_path / 'movie.MP4'}: same output as {tmp_path / 'movie.mp4'}")
    planned, errors = jobs.plan_outputs(found, out, "gif", keep_ext=True)
    assert sorted(j.dst.name for j in planned) == ["clip.gif", "clip.png.gif"] and len(errors) == 2


def test_distributed_runs_use_the_plan_made_before_ray_starts(tmp_path, photo, capsys, monkeypatch):
    from instyle import distributed

    photo.save(tmp_path / "a.jpg")
    photo.save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    monkeypatch.setattr(distributed, "stylize", lambda *a, **k: pytest.fail("Ray started with nothing to do"))
    monkeypatch.setattr(distributed, "validate", lambda args: None)  # ray itself need not be installed
    assert main(["stylize", str(tmp_path), "-o", str(tmp_path / "out"), "--format", "png",
                 "--distributed", "ray"]) == 1
    assert len([x for x in lines(capsys) if x.startswith("error:")]) == 2


# --- random trees of all of the above, through the CLI in a child process with a hard timeout ---

TREES = 30
SEED = int(os.environ.get("INSTYLE_FUZZ_SEED", "20261203"))
STEMS = ("a", "A", "b", "pic", "Pic")
EXTS = (".png", ".jpg", ".PNG", ".jpeg")
_DRIVER = """
import contextlib, io, json, sys
from instyle.cli import main
for args in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    print(json.dumps({"code": code, "err": err.getvalue()}), flush=True)
"""


def _random_tree(rng: random.Random, root: Path, photo: Image.Image, bind, unreadable: bool):
    """Make one tree; return (CLI arguments, expected lines as (kind, path), expected outputs, out folder)."""
    src, out = root / "in", root / "out"
    expected_lines, good = [], []  # good: (source, its path relative to -o)
    for folder in [src] + [src / d for d in rng.sample(["sub", "Sub2", "deep/er"], rng.randint(0, 2))]:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(rng.randint(1, 5)):
            kind = rng.choice(["image"] * 4 + list(KINDS) + ["unreadable"] * unreadable + ["link to image"])
            # a link gets a name of its own: two names of one file whose outputs clash are one job, not two
            path = folder / ((f"ln{i}" if kind == "link to image" else rng.choice(STEMS)) + rng.choice(EXTS))
            if os.path.lexists(path) or (kind == "link to image" and not good):
                continue
            if kind in ("image", "unreadable"):
                w, h = rng.randint(1, 9), rng.randint(1, 9)
                photo.crop((0, 0, w, h)).save(path, format="PNG" if "png" in path.name.lower() else "JPEG")
                if kind == "unreadable":
                    path.chmod(0)
                    expected_lines.append(("error", path))
                else:
                    good.append((path, path.relative_to(src)))
            elif kind == "link to image":
                path.symlink_to(good[-1][0].resolve())
                good.append((path, path.relative_to(src)))
            else:
                make_entry(kind, path, bind)
                expected_lines.append(("warning", path))
    args = [str(src)]
    if rng.random() < 0.5:  # the same files again through a glob whose base is the folder: one job each
        args.append(str(src / "*.*"))
        if not [p for p, _ in good if p.parent == src]:
            expected_lines.append(("error", Path(args[-1])))  # `no image files match`
    for node in rng.sample(["/dev/null", "/dev/zero", "fifo"], rng.randint(0, 2)):
        if node == "fifo":
            node = str(make_entry("fifo", root / "given.png", bind))
        args.append(node)
        expected_lines.append(("error", Path(node)))
    fmt = rng.choice([None, "png"])
    keep_ext = fmt is not None and rng.random() < 0.5
    flags = (["--format", fmt] if fmt else []) + (["--keep-ext"] if keep_ext else [])
    return args + ["-o", str(out)] + flags, expected_lines, _expected_outputs(good, fmt, keep_ext, expected_lines), out


def _expected_outputs(good, fmt, keep_ext, expected_lines) -> dict[str, Path]:
    """The oracle: output name by plain string rules, outputs whose lower-cased names clash are errors."""
    by_key: dict[str, list[tuple[Path, str]]] = {}
    for path, rel in good:
        name = str(rel)
        if fmt:
            stem, ext = os.path.splitext(name)
            name = name + "." + fmt if keep_ext and ext.lower() != "." + fmt else stem + "." + fmt
        by_key.setdefault(name.lower(), []).append((path, name))
    outputs = {}
    for group in by_key.values():
        if len(group) == 1:
            outputs[group[0][1]] = group[0][0]
        else:
            expected_lines += [("error", path) for path, _ in group]
    return outputs


def test_random_trees_always_finish_with_one_line_per_bad_entry(tmp_path, photo, sockets):
    rng = random.Random(SEED)
    unreadable = _can_make_unreadable(tmp_path)
    from instyle import checkpoint
    from instyle.models import JohnsonNet

    model = checkpoint.save(JohnsonNet(width=4, blocks=1), tmp_path / "tiny.safetensors")
    trees = [_random_tree(rng, tmp_path / f"t{i:02d}", photo, sockets, unreadable) for i in range(TREES)]
    runs = [["stylize", *args, "--model", str(model), "--backend", "eager", "--device", "cpu"]
            for args, *_ in trees]
    child = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(runs), capture_output=True, text=True,
                           timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"), **_child_kwargs())
    assert child.returncode == 0, child.stderr[-3000:]
    results = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(results) == TREES
    for i, ((args, expected, outputs, out), result) in enumerate(zip(trees, results)):
        where = f"seed {SEED}, tree {i}: {' '.join(args)}"
        err = result["err"].splitlines()
        assert "Traceback" not in result["err"], (where, result["err"])
        said = sorted(tuple(line.split(": ", 2)[:2]) for line in err if line.startswith(("error: ", "warning: ")))
        wanted = [(kind, str(path)) for kind, path in expected]
        if not outputs and all(kind != "error" for kind, _ in wanted):
            wanted.append(("error", "no image files found in " + " ".join(args[:args.index("-o")])))
        assert said == sorted(wanted), (where, said, sorted(wanted))
        assert result["code"] == (1 if not outputs or any(k == "error" for k, _ in wanted) else 0), (where, err)
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
        assert written == sorted(outputs), (where, written, sorted(outputs))
        for name, source in outputs.items():
            with Image.open(out / name) as img:
                assert img.size == Image.open(source).size, (where, name)
        assert all(stat.S_ISREG(os.lstat(out / name).st_mode) for name in outputs)
