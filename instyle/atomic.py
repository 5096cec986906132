"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one intact.

The temporary file is a dot-file beside the target whose name ends in `.tmp-XXXXXXXX`, never in the
target's own extension, so a leftover (after kill -9) is neither listed as an input image by the next run
nor mistaken for a finished output. Writers that pick a format from the file name must be told the format.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name_pattern(path: str | os.PathLike) -> str:
    """The glob pattern of atomic_path's temporary files for `path`."""
    return f".{Path(path).name}.tmp-*"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    The finished file gets the permissions of any new file (0666 minus the umask), even when the writer
    replaced the temporary file with its own (safetensors does). On any exception, KeyboardInterrupt
    included, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix="")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp (and writers' own temp files) make 0600
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
