"""Input files are regular files: checked on the stat of the resolved path before anything opens them, and
opened without ever blocking.

A FIFO with an image's name blocks the first open() until some writer comes, a device node (/dev/zero) reads
forever, a socket cannot be opened at all: so every kind of entry but a regular file is refused on its stat
(symlinks followed), before any open, with its kind named. The open itself uses O_NONBLOCK and checks the open
file again, so a path that turned into a FIFO since the check cannot block the reader either. Library code:
problems are raised as InputFileError (or returned as text by `problem`); the CLI prints them.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

# Regular files ignore O_NONBLOCK; a FIFO opened with it returns at once instead of waiting for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class InputFileError(ValueError):
    """A path that is not a regular file this process can read; str() is `PATH: cause`.

    `not_a_file` tells an entry that is no file at all (a FIFO, a socket, a device node, a broken symlink or a
    symlink loop) from a file that exists but cannot be read (permissions)."""

    def __init__(self, path, cause: str, *, not_a_file: bool):
        super().__init__(f"{os.fsdecode(path)}: {cause}")
        self.path, self.cause, self.not_a_file = path, cause, not_a_file


def _not_a_file(path, kind: str) -> InputFileError:
    return InputFileError(path, f"not a regular file ({kind})", not_a_file=True)


def _unreadable(path, e: OSError) -> InputFileError:
    return InputFileError(path, f"unreadable ({e.strerror or e})", not_a_file=False)


def kind_of(mode: int) -> str:
    """What a stat mode that is not a regular file's names: 'a FIFO', 'a socket', ..."""
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of entry")


def _open_fd(path) -> int:
    """A file descriptor open for reading on the regular file `path`; InputFileError (or FileNotFoundError when
    nothing is there at all) otherwise. Nothing but a regular file is ever opened."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the kind of what would be read
    except FileNotFoundError:
        if os.path.islink(path):
            raise _not_a_file(path, "a broken symlink") from None
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_a_file(path, "a symlink loop") from None
        raise _unreadable(path, e) from None
    if not stat.S_ISREG(mode):
        raise _not_a_file(path, kind_of(mode))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _unreadable(path, e) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # it changed since the stat above; O_NONBLOCK kept the open from waiting
        os.close(fd)
        raise _not_a_file(path, kind_of(mode))
    return fd


def open_regular(path) -> BinaryIO:
    """Open the regular file `path` for reading (binary, buffered) without ever blocking on what it is.

    Raises InputFileError when it is not a readable regular file, FileNotFoundError when nothing is there."""
    fd = _open_fd(path)
    try:
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path) -> None:
    """Raise as open_regular does unless `path` is a regular file this process can open (it is opened and closed
    again, so permissions are what the system says, whoever runs this)."""
    os.close(_open_fd(path))


def problem(path) -> InputFileError | None:
    """Why `path` cannot be read as an input file, or None when it can; a missing path is a problem too."""
    try:
        check_regular(path)
    except InputFileError as e:
        return e
    except FileNotFoundError:
        return InputFileError(path, "no such file", not_a_file=True)
    return None
