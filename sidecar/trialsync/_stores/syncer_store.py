"""Runs the engine through a custom ``Syncer`` (Ray's directory-level API).

Each file goes up as a one-file directory (a hard link in a private staging dir), so the
engine's per-file ledger and marker-last publishing hold for any syncer. A Syncer cannot
list, so checkpoint verification trusts ``wait()`` and a restart re-syncs every file.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Protocol

from trialsync._stores.base import RemoteObject


class Syncer(Protocol):
    """What this store asks of a ``trialsync.Syncer`` (Ray's directory-level API)."""

    def sync_up(
        self, local_dir: str, remote_dir: str, exclude: list[str] | None = None
    ) -> bool: ...

    def delete(self, remote_dir: str) -> bool: ...

    def wait(self) -> None: ...

    def close(self) -> None: ...


class SyncerStore:
    verifiable = False

    def __init__(self, syncer: Syncer, upload_dir: str) -> None:
        self._syncer = syncer
        self.upload_dir = upload_dir.rstrip("/")
        self._lock = asyncio.Lock()  # a Syncer runs one operation at a time

    def url(self, rel: str) -> str:
        return f"{self.upload_dir}/{rel}" if rel else self.upload_dir

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        """The syncer sends the whole file as it is now; a file that changed since its
        scan is caught by the re-check before the checkpoint's manifest."""
        async with self._lock:
            await asyncio.to_thread(self._put_file, local_path, rel)

    async def put_bytes(self, rel: str, data: bytes) -> None:
        async with self._lock:
            await asyncio.to_thread(self._put_bytes, rel, data)

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        return {}

    async def stat(self, rel: str) -> RemoteObject | None:
        return None  # a Syncer cannot look at single objects

    async def read_bytes(self, rel: str) -> bytes:
        # A Syncer reads whole directories only. The engine reads what list() reports,
        # which is nothing.
        raise FileNotFoundError(f"{self.url(rel)}: a Syncer cannot read single objects")

    async def read_range(self, rel: str, start: int, end: int) -> bytes:
        raise FileNotFoundError(f"{self.url(rel)}: a Syncer cannot read single objects")

    async def delete(self, rels: Iterable[str]) -> None:
        async with self._lock:
            for rel in rels:
                await asyncio.to_thread(self._run, self._syncer.delete, self.url(rel))

    async def connect(self) -> None:
        return None  # the syncer builds its clients itself

    async def close(self) -> None:
        await asyncio.to_thread(self._syncer.close)

    def _put_file(self, local_path: str, rel: str) -> None:
        with tempfile.TemporaryDirectory(prefix="trialsync-stage-") as stage:
            staged = os.path.join(stage, posixpath.basename(rel))
            try:
                os.link(local_path, staged)
            except OSError:
                shutil.copy2(local_path, staged)
            self._run(self._syncer.sync_up, stage, self.url(posixpath.dirname(rel)))

    def _put_bytes(self, rel: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="trialsync-stage-") as stage:
            with open(os.path.join(stage, posixpath.basename(rel)), "wb") as handle:
                handle.write(data)
            self._run(self._syncer.sync_up, stage, self.url(posixpath.dirname(rel)))

    def _run(self, start: Callable[..., bool], *args: str) -> None:
        if not start(*args):
            self._syncer.wait()  # an earlier operation still runs: let it end, then retry
            if not start(*args):
                raise RuntimeError(f"syncer refused to start {start.__name__}{args}")
        self._syncer.wait()
