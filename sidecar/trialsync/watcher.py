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
from collections.abc import Callable, Iterable
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

    def __init__(self, root: str, poll_interval: float = 10.0) -> None:
        self._root = root
        self._poll_interval = poll_interval
        self._fallback: PollingJournal | None = None
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
        if self._fallback is not None:
            self._fallback.close()
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
            # Events were lost, among them maybe the creation of directories: watch every
            # directory again (adding an existing watch is a no-op), then rescan.
            log.warning("inotify queue overflowed; rewatching and rescanning the tree")
            self._watch_or_poll("")
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
            self._watch_or_poll(rel, announce=True)
            return
        self._on_change(rel, is_dir, removed)

    def _watch_or_poll(self, rel: str, announce: bool = False) -> None:
        """Watch a subtree; out of watches, add polling so nothing goes unseen."""
        try:
            self._watch_tree(rel, announce=announce)
        except InotifyUnavailable as exc:
            if self._fallback is None:
                log.warning(
                    "cannot watch %s (%s): also polling every %ss; raise the node's "
                    "fs.inotify.max_user_watches",
                    rel or "the root",
                    exc,
                    self._poll_interval,
                )
                self._fallback = PollingJournal(self._root, self._poll_interval)
                self._fallback.start(self._on_change, self._on_overflow)
            self._on_overflow()


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
        previous_dirs = _dirs_of(previous)
        while True:
            await asyncio.sleep(self._interval)
            current = await asyncio.to_thread(scanner.scan, self._root)
            current_dirs = _dirs_of(current)
            for rel in current_dirs - previous_dirs:
                on_change(rel, True, False)
            for rel, stat in current.items():
                if previous.get(rel) != stat:
                    on_change(rel, False, False)
            for rel in previous.keys() - current.keys():
                on_change(rel, False, True)
            for rel in previous_dirs - current_dirs:
                on_change(rel, True, True)
            previous, previous_dirs = current, current_dirs


def start_journal(
    root: str, poll_interval: float, on_change: OnChange, on_overflow: OnOverflow
) -> ChangeJournal:
    """Start inotify where the kernel gives it (and watches suffice), else polling."""
    try:
        inotify = InotifyJournal(root, poll_interval)
        try:
            inotify.start(on_change, on_overflow)
            return inotify
        except InotifyUnavailable:
            inotify.close()
            raise
    except (OSError, AttributeError) as exc:
        log.warning(
            "inotify unavailable (%s); polling every %ss instead (for inotify, raise the "
            "node's fs.inotify.max_user_watches and max_user_instances)",
            exc,
            poll_interval,
        )
    polling = PollingJournal(root, poll_interval)
    polling.start(on_change, on_overflow)
    return polling


def _dirs_of(files: Iterable[str]) -> set[str]:
    """Every directory (root-relative) that holds at least one of ``files``."""
    dirs: set[str] = set()
    for rel in files:
        parent = rel.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return dirs


def _ignore_change(rel: str, is_dir: bool, removed: bool) -> None:
    pass


def _ignore_overflow() -> None:
    pass
