"""What the decoders report while a file is read lands in that file's lines only: libtiff's messages and Python
warnings raised on the reading thread, never what another thread (a server's log, another read) writes or warns
at the same time; and descriptor 2 is never moved."""
from __future__ import annotations

import io as stdio
import os
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from instyle import jobs


def _damaged_group4(path):
    """A 1-bit group-4 TIFF whose first code byte is 0xFF: it decodes, and libtiff reports bad code words."""
    from PIL import Image

    img = Image.fromarray((np.indices((40, 40)).sum(0) % 7 == 0).astype(np.uint8) * 255).convert("1")
    buffer = stdio.BytesIO()
    img.save(buffer, format="TIFF", compression="group4")
    data = bytearray(buffer.getvalue())
    with Image.open(stdio.BytesIO(bytes(data))) as tif:
        data[tif.tag_v2[273][0]] = 0xFF
    path.write_bytes(bytes(data))
    return path


def _libtiff_alone(path) -> list[str]:
    """The reference: what libtiff prints on stderr for the file in a process of its own (its default handler)."""
    code = f"from PIL import Image; Image.open({str(path)!r}).load()"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stderr.splitlines() if line.strip()]


def test_each_reading_thread_gets_libtiff_s_messages_for_its_own_file(tmp_path):
    src = _damaged_group4(tmp_path / "g4.tif")
    expected = [f"warning: {src}: {line}" for line in _libtiff_alone(src)][:3]
    if not expected:
        pytest.skip("this libtiff reports nothing for the damaged file")
    fd2 = os.fstat(2)
    stop = threading.Event()

    def chatter():  # another thread logging to descriptor 2 all along, as a server does
        while not stop.is_set():
            os.write(2, b"chatter from another thread\n")

    def read(_):
        job = jobs.Job(src, src, (40, 40))
        assert jobs.read_job(job, jobs.ImageOptions()) is not None, job.lines
        return job.lines

    talker = threading.Thread(target=chatter)
    talker.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(read, range(32)))
    finally:
        stop.set()
        talker.join()
    assert all(lines == expected for lines in results), [r for r in results if r != expected][:2]
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (fd2.st_dev, fd2.st_ino), "descriptor 2 was left pointing elsewhere"


def test_what_another_thread_writes_or_warns_meanwhile_stays_out_of_a_files_lines(tmp_path, capfd):
    from PIL import Image

    src = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(src)

    def read_while_another_thread_talks(path):
        def talk():
            os.write(2, b"WARNING: Invalid HTTP request received.\n")
            warnings.warn("a warning of another thread", UserWarning, stacklevel=1)

        other = threading.Thread(target=talk)
        other.start()
        other.join()
        with Image.open(path) as img:
            return img.size

    lines: list[str] = []
    with warnings.catch_warnings(record=True) as elsewhere:
        warnings.simplefilter("always")
        assert jobs._reporting_warnings(lines, read_while_another_thread_talks, src) == (8, 8)
    assert lines == []
    assert "Invalid HTTP request received" in capfd.readouterr().err  # it reached the log it was written to
    assert [str(w.message) for w in elsewhere] == ["a warning of another thread"]


def test_the_reading_thread_s_own_python_warnings_are_its_lines(tmp_path):
    src = tmp_path / "f.png"
    src.write_bytes(b"x")

    def warn(path):
        warnings.warn(f"{path.name}: something odd\nsecond line", UserWarning, stacklevel=1)
        return 1

    lines: list[str] = []
    for _ in range(2):  # shown every time, not once per process
        assert jobs._reporting_warnings(lines, warn, src) == 1
    assert lines == [f"warning: {src}: f.png: something odd"] * 2
