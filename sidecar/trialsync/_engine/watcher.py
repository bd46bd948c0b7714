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
import dataclasses
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable
from typing import Protocol

from trialsync import contract
from trialsync._engine import scanner
from trialsync._util.local_files import Stat

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
    async def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None:
        """Watch from now on; returns once the watch is in place."""

    async def catch_up(self) -> None:
        """Report every change made before this call (a trigger calls it first)."""

    def close(self) -> None: ...


class InotifyUnavailable(OSError):
    pass


@dataclasses.dataclass
class _Walk:
    """What watching a subtree found: its directories and files, root-relative."""

    dirs: list[str] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)


class InotifyJournal:
    """Recursive inotify watch of ``root``; must be started inside a running event loop.

    Watching a subtree (a scandir per directory: seconds for a large tree) runs in a worker
    thread, so the event loop keeps serving ``/healthz`` meanwhile.
    """

    def __init__(self, root: str, poll_interval: float = contract.POLL_INTERVAL.default) -> None:
        self._root = root
        self._poll_interval = poll_interval
        self._fallback: PollingJournal | None = None
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise InotifyUnavailable(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int = fd
        # Written by the walking thread as each watch is added (before its directory is
        # read), so the loop knows a watch as soon as its first event can arrive.
        self._dirs: dict[int, str] = {}
        self._walks: set[asyncio.Task[None]] = set()
        self._on_change: OnChange = _ignore_change
        self._on_overflow: OnOverflow = _ignore_overflow

    @property
    def watched_dirs(self) -> int:
        return len(self._dirs)

    async def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None:
        self._on_change, self._on_overflow = on_change, on_overflow
        await asyncio.to_thread(self._watch_tree, "", False)
        asyncio.get_running_loop().add_reader(self._fd, self._read)

    async def catch_up(self) -> None:
        if self._fd >= 0:
            self._read()  # a change made before now has its event queued in the kernel
        while self._walks:  # new subtrees being watched, which announce what they hold
            await asyncio.wait(set(self._walks))
        if self._fallback is not None:
            await self._fallback.catch_up()

    def close(self) -> None:
        for walk in self._walks:
            walk.cancel()
        if self._fallback is not None:
            self._fallback.close()
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _watch_tree(self, rel: str, collect: bool) -> _Walk:
        """Watch ``rel`` and every directory below it; with ``collect``, what it holds (a
        new subtree, to announce). Blocks: run it in a worker thread."""
        found = _Walk()
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
            if collect:
                found.dirs.append(current)
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                child = f"{current}/{entry.name}" if current else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(child)
                elif collect:
                    found.files.append(child)
        return found

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
            self._walk("", announce=False)
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
            self._on_change(rel, True, False)
            self._walk(rel, announce=True)
            return
        self._on_change(rel, is_dir, removed)

    def _walk(self, rel: str, announce: bool) -> None:
        """Watch a subtree in a worker thread: a new directory (announcing what was already
        in it) or, after an overflow, the whole tree (then a rescan)."""
        task = asyncio.get_running_loop().create_task(self._watch_or_poll(rel, announce))
        self._walks.add(task)
        task.add_done_callback(self._walks.discard)

    async def _watch_or_poll(self, rel: str, announce: bool) -> None:
        """Watch a subtree; out of watches, add polling so nothing goes unseen."""
        try:
            found = await asyncio.to_thread(self._watch_tree, rel, announce)
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
                await self._fallback.start(self._on_change, self._on_overflow)
            self._on_overflow()
            return
        if announce:
            for current in found.dirs:
                if current != rel:
                    self._on_change(current, True, False)
            for child in found.files:
                self._on_change(child, False, False)
        else:
            self._on_overflow()


class PollingJournal:
    """Diffs a stat walk every ``interval`` seconds; for filesystems without inotify."""

    def __init__(self, root: str, interval: float) -> None:
        self._root = root
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._on_change: OnChange = _ignore_change
        self._previous: dict[str, Stat] = {}
        self._previous_dirs: set[str] = set()
        self._polling = asyncio.Lock()

    async def start(self, on_change: OnChange, on_overflow: OnOverflow) -> None:
        self._on_change = on_change
        self._previous = await asyncio.to_thread(scanner.scan, self._root)
        self._previous_dirs = _dirs_of(self._previous)
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def catch_up(self) -> None:
        """Poll now (a stat walk: O(files))."""
        async with self._polling:
            current = await asyncio.to_thread(scanner.scan, self._root)
            current_dirs = _dirs_of(current)
            on_change, previous = self._on_change, self._previous
            for rel in current_dirs - self._previous_dirs:
                on_change(rel, True, False)
            for rel, stat in current.items():
                if previous.get(rel) != stat:
                    on_change(rel, False, False)
            for rel in previous.keys() - current.keys():
                on_change(rel, False, True)
            for rel in self._previous_dirs - current_dirs:
                on_change(rel, True, True)
            self._previous, self._previous_dirs = current, current_dirs

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.catch_up()


async def start_journal(
    root: str, poll_interval: float, on_change: OnChange, on_overflow: OnOverflow
) -> ChangeJournal:
    """Start inotify where the kernel gives it (and watches suffice), else polling."""
    try:
        inotify = InotifyJournal(root, poll_interval)
        try:
            await inotify.start(on_change, on_overflow)
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
    await polling.start(on_change, on_overflow)
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
