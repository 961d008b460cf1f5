"""Reading files a user can point us at, safely: only regular files, never more bytes than expected.

A path can be a FIFO (opening it blocks until someone writes), /dev/zero (endless), a symlink to either,
or a regular file far larger than anything the project writes. Each of these hung or exhausted memory
before it was read this way: open without blocking, look at what the descriptor is, check its size against
what the caller expects, and only then read.
"""

import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from common.errors import LadderError


class FileRefused(LadderError):
    """Not a regular file, or larger than the caller allows; the message says which."""


def open_regular(path: str | os.PathLike, max_bytes: int) -> BinaryIO:
    """Open `path` for reading if it is a regular file of at most `max_bytes`; else raise FileRefused.

    FileNotFoundError and PermissionError pass through for the caller to word.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path}: {_kind(info.st_mode)}, not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise FileRefused(f"{path}: {_size(info.st_size)}, more than the {_size(max_bytes)} expected here")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes` (see open_regular)."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read
        raise FileRefused(f"{path}: grew past the {_size(max_bytes)} expected here while being read")
    return data


def check_regular(path: str | os.PathLike, max_bytes: int) -> int:
    """Raise unless `path` is a regular file of at most `max_bytes`; return its size. For readers that
    open the file themselves (safetensors, torch)."""
    with open_regular(path, max_bytes) as f:
        return os.fstat(f.fileno()).st_size


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and `kill` wait until the block is done: files written in it change together, or not at all."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename: readers see all or nothing, and a
    write that fails (a full disk) leaves nothing behind."""
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def describe(path: Path) -> str:
    """'a folder with 3 entries', 'a file of 12 bytes', ...: what is at a path, for an error message."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "nothing"
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link to {os.readlink(path)}"
    if stat.S_ISDIR(info.st_mode):
        try:
            entries = sorted(p.name for p in path.iterdir())
        except OSError:
            return "a folder we cannot list"
        example = f" (e.g. {entries[0]!r})" if entries else ""
        return f"a folder with {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}{example}"
    if stat.S_ISREG(info.st_mode):
        return f"a file of {_size(info.st_size)}"
    return _kind(info.st_mode)
