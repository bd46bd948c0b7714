"""Small private files (a key, an identity, a claims table), written atomically, mode 0600.

Blocking: call them in a worker thread from async code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable by this user only.

    A reader, also one after a crash, sees the old content or the new one, never a part:
    the data is fsynced to a temp file beside ``path``, renamed over it, and the rename
    made durable. Missing parent dirs are created with mode 0700.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(directory)


def read_private(path: str) -> bytes | None:
    """The content of ``path``, or None if it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def set_aside(path: str) -> str:
    """Rename an unreadable ``path`` out of the way (kept for inspection); the new name."""
    aside = f"{path}.unreadable-{os.getpid()}-{int.from_bytes(os.urandom(3), 'big'):06x}"
    os.replace(path, aside)
    return aside


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename into it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
