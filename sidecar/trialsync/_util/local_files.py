"""Reading a local file exactly as it was scanned, and telling its failures from the store's.

Uploads read the size the scan saw, never more: a file that grows between the scan and
the read still costs only the memory reserved for it, and the bytes sent match the
(size, mtime) the ledger records. Every local read error is raised as ``LocalReadError``
(``ShortRead`` for a file with fewer bytes than scanned), so it is never taken for a
failure of the store. These functions block: call them in a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat as stat_mod
from collections.abc import Iterator

Stat = tuple[int, int]  # (size in bytes, mtime in ns)

VANISHED = "vanished"  # deleted (or replaced by something that is not a file)
CHANGED = "changed"  # another size or mtime than scanned, or shorter than scanned
UNREADABLE = "unreadable"  # there, unchanged, and cannot be read (EACCES, EIO, ...)
# Not the file's doing: the store refuses this one object (base.ObjectRefused,
# the head-node service's per-path refusals) and takes the others.
REFUSED = "refused"


class LocalReadError(OSError):
    """Reading the local file failed (the store was not involved)."""


class ShortRead(LocalReadError):
    """The file holds fewer bytes than its scan said: it shrank under the reader."""

    def __init__(self, path: str, expected: int, got: int) -> None:
        super().__init__(errno.EIO, f"{path}: {got} bytes where {expected} were scanned")


@dataclasses.dataclass(frozen=True)
class FileFailure:
    """Why one file could not be uploaded, when that fails only the file's own checkpoint or
    artifact: the file itself, or the store refusing it alone."""

    reason: str  # VANISHED, CHANGED, UNREADABLE or REFUSED
    detail: str


def read_exact(path: str, size: int) -> bytes:
    """The first ``size`` bytes of ``path``; ShortRead if it has fewer."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(size)
    except OSError as exc:
        raise _local(exc, path) from exc
    if len(data) != size:
        raise ShortRead(path, size, len(data))
    return data


def open_for_reading(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _local(exc, path) from exc


@contextlib.contextmanager
def reading(path: str) -> Iterator[int]:
    """``path`` open for reading (``open_for_reading``), closed on leaving."""
    fd = open_for_reading(path)
    try:
        yield fd
    finally:
        os.close(fd)


def chunks(fd: int, size: int, path: str, chunk: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``fd`` (the file ``path``), ``chunk`` bytes at a time,
    exactly as scanned (``pread_exact``)."""
    for offset in range(0, size, chunk):
        yield pread_exact(fd, min(chunk, size - offset), offset, path)


def pread_exact(fd: int, length: int, offset: int, path: str) -> bytes:
    """``length`` bytes at ``offset``; ShortRead if the file ends before."""
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise _local(exc, path) from exc
    if len(data) != length:
        raise ShortRead(path, offset + length, offset + len(data))
    return data


def diagnose(path: str, scanned: Stat, error: BaseException) -> FileFailure | None:
    """Why uploading ``path`` failed with ``error``, if the local file is the cause.

    None when the file is still as scanned and readable: then the store failed, which
    fails the whole sync (and its retry). A store's PermissionError (403) and a local
    EACCES look alike, so the file is probed rather than the error trusted.
    """
    if isinstance(error, ShortRead):
        return FileFailure(CHANGED, str(error))
    try:
        current = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return FileFailure(VANISHED, "deleted before or while it was read")
    except OSError as exc:
        return FileFailure(UNREADABLE, exc.strerror or str(exc))
    if not stat_mod.S_ISREG(current.st_mode):
        return FileFailure(VANISHED, "no longer a regular file")
    if (current.st_size, current.st_mtime_ns) != scanned:
        return FileFailure(CHANGED, f"{scanned[0]} bytes when scanned, {current.st_size} now")
    if isinstance(error, LocalReadError):
        return FileFailure(UNREADABLE, error.strerror or str(error))
    try:
        os.close(open_for_reading(path))
    except OSError as exc:
        return FileFailure(UNREADABLE, exc.strerror or str(exc))
    return None


def _local(exc: OSError, path: str) -> LocalReadError:
    return LocalReadError(exc.errno, exc.strerror or str(exc), path)


def write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
