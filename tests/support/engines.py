"""A real sync engine on a real store, fed by a real change journal of a local root."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from trialsync._engine.engine import EngineOptions, SyncEngine
from trialsync._engine.watcher import ChangeJournal, InotifyJournal, PollingJournal
from trialsync._stores.base import RemoteObject, Store
from trialsync._stores.fsspec_store import RemoteStore
from trialsync.metrics import Metrics

#: How the engine hears of changes: inotify; inotify whose events stay queued in the
#: kernel (not read yet); polling that does not poll within a test; no journal at all
#: (``--once``, a final sync).
JournalKind = Literal["inotify", "queued", "polling", "none"]


@dataclasses.dataclass
class RunningEngine:
    engine: SyncEngine
    store: Store
    journal: ChangeJournal | None

    async def caught_up(self) -> None:
        """Let the engine hear of every change made so far (no sleeping)."""
        if self.journal is not None:
            await self.journal.catch_up()


@contextlib.asynccontextmanager
async def running_engine(
    store: Store, root: pathlib.Path, journal: JournalKind = "inotify", **options: Any
) -> AsyncIterator[RunningEngine]:
    """An engine over ``root`` (``options``: EngineOptions); the store is closed after."""
    engine = SyncEngine(EngineOptions(root=str(root), **options), store, Metrics())
    watching: ChangeJournal | None = None
    if journal in ("inotify", "queued"):
        inotify = InotifyJournal(str(root))
        await inotify.start(engine.note_change, engine.note_overflow)
        if journal == "queued":
            asyncio.get_running_loop().remove_reader(inotify._fd)
        watching = inotify
    elif journal == "polling":
        watching = PollingJournal(str(root), interval=3600)
        await watching.start(engine.note_change, engine.note_overflow)
    try:
        yield RunningEngine(engine, store, watching)
    finally:
        if watching is not None:
            watching.close()
        await store.close()


Hook = Callable[[str], None]


class HookedStore(RemoteStore):
    """The real store, letting a test act as the trainer at an exact moment of a sync.

    ``before_put(rel)`` / ``after_put(rel)`` run around each file upload, ``after_list(prefix)``
    after each listing (the verify listing of a checkpoint comes after its uploads).
    """

    def __init__(self, url: str, storage_options: dict[str, Any], **options: Any) -> None:
        super().__init__(url, storage_options, **options)
        self.before_put: Hook = _nothing
        self.after_put: Hook = _nothing
        self.after_list: Hook = _nothing

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        self.before_put(rel)
        await super().put_file(local_path, rel, size)
        self.after_put(rel)

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        found = await super().list(rel_prefix)
        self.after_list(rel_prefix)
        return found


def _nothing(rel: str) -> None:
    pass
