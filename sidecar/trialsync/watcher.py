"""Change journals: tell the engine which paths changed, so a sync never walks the tree.

``InotifyJournal`` watches every directory below the root with Linux inotify (the sidecar
and the trainer share one kernel, so this sees every write to the shared volume).
``PollingJournal`` is the fallback where inotify is unavailable or out of watches: it diffs
stat walks, which costs O(files) per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable
from typing import Protocol

from trialsync import scanner

log = logging.getLogger(__name__)

# (root-relative path, is a directory, was removed)
OnChange = Callable[[str, bool, bool], None]
OnOverflow = Callable[[], None]

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_ONLYDIR
)
_HEADER = struct.Struct("iIII")


class ChangeJournal(Protocol):
    def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None: ...

    def close(self) -> None: ...


class InotifyUnavailable(OSError):
    pass


class InotifyJournal:
    """Recursive inotify watch of ``root``; must be started inside a running event loop."""

    def __init__(self, root: str) -> None:
        self._root = root
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise InotifyUnavailable(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int = fd
        self._dirs: dict[int, str] = {}
        self._on_change: OnChange = _ignore_change
        self._on_overflow: OnOverflow = _ignore_overflow

    @property
    def watched_dirs(self) -> int:
        return len(self._dirs)

    def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None:
        self._on_change, self._on_overflow = on_change, on_overflow
        self._watch_tree("", announce=False)
        asyncio.get_running_loop().add_reader(self._fd, self._read)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _watch_tree(self, rel: str, announce: bool) -> None:
        """Watch ``rel`` and every directory below it; announce files found (a new subtree)."""
        stack = [rel]
        while stack:
            current = stack.pop()
            path = os.path.join(self._root, current) if current else self._root
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):
                    continue
                raise InotifyUnavailable(err, f"inotify_add_watch {path}: {os.strerror(err)}")
            self._dirs[wd] = current
            if announce:
                self._on_change(current, True, False)
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                child = f"{current}/{entry.name}" if current else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(child)
                elif announce:
                    self._on_change(child, False, False)

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 256 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0").decode(errors="surrogateescape")
                offset += length
                self._handle(wd, mask, name)

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            log.warning("inotify queue overflowed; the next sync rescans the tree")
            self._on_overflow()
            return
        if mask & _IN_IGNORED:
            self._dirs.pop(wd, None)
            return
        parent = self._dirs.get(wd)
        if parent is None or not name:
            return
        rel = f"{parent}/{name}" if parent else name
        is_dir = bool(mask & _IN_ISDIR)
        removed = bool(mask & (_IN_DELETE | _IN_MOVED_FROM))
        if is_dir and mask & (_IN_CREATE | _IN_MOVED_TO):
            try:
                self._watch_tree(rel, announce=True)
            except InotifyUnavailable as exc:
                log.warning("cannot watch %s (%s); the next sync rescans the tree", rel, exc)
                self._on_overflow()
            return
        self._on_change(rel, is_dir, removed)


class PollingJournal:
    """Diffs a stat walk every ``interval`` seconds; for filesystems without inotify."""

    def __init__(self, root: str, interval: float) -> None:
        self._root = root
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll(on_change))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _poll(self, on_change: OnChange) -> None:
        previous = await asyncio.to_thread(scanner.scan, self._root)
        while True:
            await asyncio.sleep(self._interval)
            current = await asyncio.to_thread(scanner.scan, self._root)
            for rel, stat in current.items():
                if previous.get(rel) != stat:
                    on_change(rel, False, False)
            for rel in previous.keys() - current.keys():
                on_change(rel, False, True)
            previous = current


def open_journal(root: str, poll_interval: float) -> ChangeJournal:
    """inotify where the kernel gives it, else polling."""
    try:
        return InotifyJournal(root)
    except (OSError, AttributeError) as exc:
        log.warning("inotify unavailable (%s); polling every %ss", exc, poll_interval)
        return PollingJournal(root, poll_interval)


def _ignore_change(rel: str, is_dir: bool, removed: bool) -> None:
    pass


def _ignore_overflow() -> None:
    pass
