"""The head-node service's file work: temp files, listings, pruning, start-up sweep, lock.

Blocking functions here run in worker threads; ``TempFile`` and ``Tree`` are the async
faces the receiver uses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from trialsync._util.private_files import fsync_dir

log = logging.getLogger(__name__)

# In-progress uploads are named ".<name>.trialsync-tmp-<16 hex>"; listings skip them and a
# client may not address them.
TEMP_MARKER = ".trialsync-tmp-"
_TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARKER) + r"[0-9a-f]{16}", re.DOTALL)
LOCK_NAME = "lock"
# How often a receiver waiting for another one's lock says so.
LOCK_WAIT_LOG_INTERVAL = 10.0


class TempFile:
    """``.<name>.trialsync-tmp-<random>`` beside ``target``, renamed over it on commit.

    At most one blocking operation runs in a thread at a time; ``discard`` may be called
    at any moment (even while the handler is being cancelled) and removes the temp file
    once that operation is over, so no thread ever writes to a closed or reused fd.
    """

    def __init__(self, target: str, path: str, fd: int) -> None:
        self.target, self.path, self.fd = target, path, fd
        self.committed = False
        self._busy: asyncio.Future[Any] | None = None

    @classmethod
    async def create(cls, target: str) -> TempFile:
        """Open a new temp file for ``target``, making its missing parent dirs."""
        path, fd = await asyncio.to_thread(_open_temp, target)
        return cls(target, path, fd)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._busy = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        # shield: if this task is cancelled, _busy still completes and discard waits for it.
        return await asyncio.shield(self._busy)

    async def write(self, data: bytes) -> None:
        await self._run(_write_all, self.fd, data)

    async def commit(self, mtime_ns: int | None) -> None:
        fd, self.fd = self.fd, -1  # _commit closes it, whatever happens
        await self._run(_commit, fd, self.path, self.target, mtime_ns)
        self.committed = True

    def discard(self) -> bool:
        """Remove the temp file: now (True), or once the running operation ends (False)."""
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: self.discard())
            return False
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True


class Tree:
    """The receiver's own writers and its pruning, kept from racing each other.

    An upload announces the dirs it may create before it makes any of them, and a prune
    removes a dir only while no upload has announced it, under the same lock. So a DELETE
    never removes a dir between an upload's makedirs and its open. Writers outside the
    receiver are kept safe by where pruning may happen at all (see ``prune``).
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._in_use: collections.Counter[str] = collections.Counter()

    @contextlib.asynccontextmanager
    async def upload(self, target: str, stop: str) -> AsyncIterator[TempFile]:
        """A temp file for ``target``, whose dirs below ``stop`` are not pruned meanwhile.

        Unless it was committed, the temp file is removed at the end, and so are the dirs
        that leaves empty: a checkpoint dir with no files looks like a checkpoint to a
        restoring trainer.
        """
        parent = os.path.dirname(target)
        upload: TempFile | None = None
        emptied = False
        try:
            async with self.using(_dirs_below(parent, stop)):
                try:
                    upload = await TempFile.create(target)
                    yield upload
                finally:
                    # Removed now, or (handler cancelled mid-write) once the write ends.
                    emptied = upload is None or (not upload.committed and upload.discard())
        finally:
            if emptied:
                await self.prune(parent, stop)

    @contextlib.asynccontextmanager
    async def using(self, directories: list[str]) -> AsyncIterator[None]:
        """Keep ``directories`` from being pruned while the block runs."""
        async with self._lock:
            self._in_use.update(directories)
        try:
            yield
        finally:
            self._in_use.subtract(directories)
            self._in_use += collections.Counter()  # drops the zero counts

    async def prune(self, directory: str, stop: str) -> None:
        """Remove ``directory`` and its parents strictly below ``stop`` while they are empty.

        ``stop`` is a trial dir: only the worker holding it writes below it, and only
        through this receiver, so every dir pruned here is one the receiver made. The
        trial dir and everything above it (made by the trainer on the head, or wanted by
        it) are never removed.
        """
        async with self._lock:
            in_use = set(self._in_use)
            await asyncio.to_thread(_prune, directory, stop, in_use)


def _dirs_below(directory: str, stop: str) -> list[str]:
    """``directory`` and its parents strictly below ``stop``: what an upload may make."""
    dirs = []
    while directory.startswith(stop + os.sep):
        dirs.append(directory)
        directory = os.path.dirname(directory)
    return dirs


def _open_temp(target: str) -> tuple[str, int]:
    directory, name = os.path.split(target)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f".{name}{TEMP_MARKER}{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return path, os.open(path, flags, 0o666)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(fd: int, path: str, target: str, mtime_ns: int | None) -> None:
    """fsync, set the mtime, rename over ``target``, fsync the directory (rename durable)."""
    try:
        os.fsync(fd)
        if mtime_ns is not None:
            os.utime(fd, ns=(time.time_ns(), mtime_ns))
    finally:
        os.close(fd)
    try:
        os.replace(path, target)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    fsync_dir(os.path.dirname(target))


def walk(base: str, prefix: str, skip: str) -> dict[str, dict[str, float]]:
    """Regular files at or below ``base``, keyed ``prefix``-relative; symlinks, temp files
    and the dir ``skip`` (the head's state) are left out."""
    found: dict[str, dict[str, float]] = {}
    try:
        st = os.lstat(base)
    except (FileNotFoundError, NotADirectoryError):
        return found
    if stat.S_ISREG(st.st_mode):
        if TEMP_MARKER not in os.path.basename(base):
            found[prefix] = {"size": st.st_size, "mtime": st.st_mtime}
        return found
    stack = [(base, prefix)]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while walking
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path != skip:
                        stack.append((entry.path, rel))
                elif entry.is_file(follow_symlinks=False) and TEMP_MARKER not in entry.name:
                    est = entry.stat(follow_symlinks=False)
                    found[rel] = {"size": est.st_size, "mtime": est.st_mtime}
            except FileNotFoundError:
                continue
    return found


def unlink(target: str) -> None:
    """Remove the file ``target``; nothing if it is missing. IsADirectoryError for a dir."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(target)


def _prune(directory: str, stop: str, in_use: set[str]) -> None:
    while directory.startswith(stop + os.sep) and directory not in in_use:
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty (or gone): neither it nor its parents can go
        directory = os.path.dirname(directory)


def sweep_temp_files(root: str, skip: str) -> int:
    """Remove the temp files a killed writer left below ``root``; how many (blocking).

    Only regular files named as this service names its temp files are removed. The walk
    never follows a symlink (``fwalk`` checks each dir it enters is the one it listed),
    so nothing outside ``root`` is touched, and ``skip`` (the head's state) is not entered.
    Run it only while no upload can run: the receiver does, holding the root's lock and
    before it listens.
    """
    removed = 0
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in filenames:
            if not _TEMP_NAME.fullmatch(name):
                continue
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                    continue
                os.unlink(name, dir_fd=dirfd)
            except FileNotFoundError:
                continue
            removed += 1
            log.info("leftover temp file removed", extra={"path": os.path.join(dirpath, name)})
    return removed


async def lock_state_dir(state_dir: str) -> int:
    """Hold the state dir's lock: one receiver per root. Waits while another holds it.

    Returns the lock's fd; closing it releases the lock (so does the process's exit).
    """
    fd = await asyncio.to_thread(_open_lock, state_dir)
    loop = asyncio.get_running_loop()
    said = float("-inf")
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError:
            os.close(fd)
            raise
        if loop.time() - said >= LOCK_WAIT_LOG_INTERVAL:
            said = loop.time()
            log.warning(
                "another head receiver serves this root; waiting for it to exit",
                extra={"state_dir": state_dir},
            )
        await asyncio.sleep(0.2)


def _open_lock(state_dir: str) -> int:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, LOCK_NAME)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
