"""Ray Tune's Syncer interface, and the default syncer built on fsspec.

The method set and their meaning follow ``ray.tune.syncer.Syncer``: ``sync_up``,
``sync_down`` and ``delete`` start an operation and return False if one is still running;
``wait`` blocks until it ends, raising on failure; ``retry`` runs the last one again.
Unlike Ray, ``wait`` cancels an operation that runs past ``sync_timeout`` instead of
letting it run on.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import fnmatch
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from trialsync import contract
from trialsync._engine import download, scanner, transfer
from trialsync._engine.ledger import Ledger
from trialsync._stores.fsspec_store import RemoteStore
from trialsync._util import local_files, tasks
from trialsync.config import validate_uri

DOWNLOADS_IN_FLIGHT = 16  # files, and parts of them

log = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """A sync operation failed; the message says which and why."""


class Syncer(abc.ABC):
    """Moves a local directory to and from a remote URI (Ray's Syncer contract)."""

    def __init__(
        self,
        sync_period: float = contract.SYNC_PERIOD.default,
        sync_timeout: float = contract.SYNC_TIMEOUT.default,
    ) -> None:
        self.sync_period = sync_period
        self.sync_timeout = sync_timeout
        self.last_sync_up_time = float("-inf")
        self.last_sync_down_time = float("-inf")

    @abc.abstractmethod
    def sync_up(self, local_dir: str, remote_dir: str, exclude: list[str] | None = None) -> bool:
        """Start uploading ``local_dir`` to ``remote_dir``; False if a sync is running."""

    @abc.abstractmethod
    def sync_down(self, remote_dir: str, local_dir: str, exclude: list[str] | None = None) -> bool:
        """Start downloading ``remote_dir`` to ``local_dir``; False if a sync is running."""

    @abc.abstractmethod
    def delete(self, remote_dir: str) -> bool:
        """Start deleting ``remote_dir``; False if a sync is running."""

    def retry(self) -> None:
        """Run the last operation again."""
        raise NotImplementedError

    def wait(self) -> None:  # noqa: B027 - Ray's default: operations are synchronous
        """Block until the running operation ends; raise SyncError or TimeoutError on failure."""

    def wait_or_retry(self, max_retries: int = 2, backoff_s: float = 5) -> None:
        """Wait, retrying up to ``max_retries`` times after ``backoff_s`` seconds each."""
        assert max_retries > 0
        last_error: Exception | None = None
        for attempt in range(max_retries + 1):
            try:
                self.wait()
                return
            except Exception as exc:
                last_error = exc
                log.warning("sync failed (attempt %d): %s", attempt + 1, exc)
                if attempt < max_retries:
                    time.sleep(backoff_s)
                    self.retry()
        raise SyncError(f"sync failed after {max_retries + 1} attempts: {last_error}")

    def sync_up_if_needed(
        self, local_dir: str, remote_dir: str, exclude: list[str] | None = None
    ) -> bool:
        """Sync up if at least ``sync_period`` seconds passed since the last sync up."""
        now = time.monotonic()
        if now - self.last_sync_up_time >= self.sync_period:
            result = self.sync_up(local_dir, remote_dir, exclude)
            self.last_sync_up_time = now
            return result
        return False

    def sync_down_if_needed(
        self, remote_dir: str, local_dir: str, exclude: list[str] | None = None
    ) -> bool:
        """Sync down if at least ``sync_period`` seconds passed since the last sync down."""
        now = time.monotonic()
        if now - self.last_sync_down_time >= self.sync_period:
            result = self.sync_down(remote_dir, local_dir, exclude)
            self.last_sync_down_time = now
            return result
        return False

    def close(self) -> None:  # noqa: B027 - most syncers hold nothing to release
        """Release resources; the syncer is not used afterwards."""

    @classmethod
    def validate_upload_dir(cls, upload_dir: str) -> bool:
        """True if this syncer can write to ``upload_dir``, else raise ValueError."""
        validate_uri(upload_dir)
        return True


class FsspecSyncer(Syncer):
    """The default syncer: any fsspec URI, uploads only what changed since the last sync.

    Operations run on a private event loop in a background thread, one at a time.
    """

    def __init__(
        self,
        sync_period: float = contract.SYNC_PERIOD.default,
        sync_timeout: float = contract.SYNC_TIMEOUT.default,
        storage_options: dict[str, Any] | None = None,
        s3_botocore: bool = False,
    ) -> None:
        super().__init__(sync_period, sync_timeout)
        self._storage_options = storage_options or {}
        self._s3_botocore = s3_botocore
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._last: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._stores: dict[str, RemoteStore] = {}
        self._ledgers: dict[tuple[str, str], Ledger] = {}

    def sync_up(self, local_dir: str, remote_dir: str, exclude: list[str] | None = None) -> bool:
        return self._start(lambda: self._sync_up(local_dir, remote_dir, exclude or []))

    def sync_down(self, remote_dir: str, local_dir: str, exclude: list[str] | None = None) -> bool:
        return self._start(lambda: self._sync_down(remote_dir, local_dir, exclude or []))

    def delete(self, remote_dir: str) -> bool:
        return self._start(lambda: self._delete(remote_dir))

    def retry(self) -> None:
        if self._last is None:
            raise SyncError("nothing to retry: no sync has been started")
        self._future = None
        self._start(self._last)

    def wait(self) -> None:
        future = self._future
        if future is None:
            return
        try:
            future.result(timeout=self.sync_timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(
                f"sync did not finish within sync_timeout={self.sync_timeout}s; cancelled"
            ) from exc
        except concurrent.futures.CancelledError as exc:
            raise SyncError("sync was cancelled") from exc
        except Exception as exc:
            raise SyncError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if future.done():
                self._future = None

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for store in self._stores.values():
            asyncio.run_coroutine_threadsafe(store.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def _start(self, make: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        if self._future is not None and not self._future.done():
            return False
        self._last = make
        self._future = asyncio.run_coroutine_threadsafe(make(), self._ensure_loop())
        return True

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="trialsync-syncer", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def _store(self, remote_dir: str) -> RemoteStore:
        if remote_dir not in self._stores:
            self._stores[remote_dir] = RemoteStore(
                remote_dir, self._storage_options, s3_botocore=self._s3_botocore
            )
        return self._stores[remote_dir]

    async def _sync_up(self, local_dir: str, remote_dir: str, exclude: list[str]) -> None:
        ledger = self._ledgers.setdefault((local_dir, remote_dir), Ledger())
        local = await asyncio.to_thread(scanner.scan, local_dir)
        todo = {
            rel: st
            for rel, st in local.items()
            if not _excluded(rel, exclude) and not ledger.is_current(rel, st)
        }
        store = self._store(remote_dir)
        failures = await transfer.upload_files(
            store, local_dir, todo, transfer.Gates(), ledger.record
        )
        # A file deleted meanwhile is no failure; one that could not be read is.
        failed = {
            rel: f"{f.reason}: {f.detail}"
            for rel, f in failures.items()
            if f.reason != local_files.VANISHED
        }
        if failed:
            raise SyncError(f"{len(failed)} files not uploaded: {failed}")

    async def _sync_down(self, remote_dir: str, local_dir: str, exclude: list[str]) -> None:
        """Every remote file into ``local_dir`` in ranged parts (never held whole in memory),
        each written to a temp file and renamed into place, ``DOWNLOADS_IN_FLIGHT`` at a
        time."""
        store = self._store(remote_dir)
        listed = await store.list()
        gates = download.Gates(DOWNLOADS_IN_FLIGHT)

        async def one(rel: str) -> None:
            target = os.path.join(local_dir, rel)
            temp = f"{target}.trialsync-tmp"
            await asyncio.to_thread(os.makedirs, os.path.dirname(target), exist_ok=True)
            try:
                size = listed[rel].size
                await download.fetch(
                    store, rel, temp, size, contract.PART_SIZE.default, gates, lambda _: None
                )
                await asyncio.to_thread(os.replace, temp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise

        rels = [rel for rel in listed if not _excluded(rel, exclude)]
        await tasks.bounded(DOWNLOADS_IN_FLIGHT, rels, one)

    async def _delete(self, remote_dir: str) -> None:
        store = self._store(remote_dir)
        await store.delete(list(await store.list()))
        for key in [k for k in self._ledgers if k[1] == remote_dir]:
            del self._ledgers[key]


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase("/" + rel, p) for p in patterns)


def load_syncer(spec: str, sync_period: float, sync_timeout: float) -> Syncer:
    """Instantiate ``"package.module:Class"``, a Syncer subclass, or raise ValueError."""
    contract.SYNCER.check(spec)  # a SettingError is a ValueError
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"syncer {spec!r}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Syncer):
        raise ValueError(f"syncer {spec!r}: {class_name!r} is not a trialsync.Syncer subclass")
    syncer: Syncer = cls(sync_period=sync_period, sync_timeout=sync_timeout)
    return syncer
