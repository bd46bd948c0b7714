"""Concurrent uploads of many files, shared by the sync engine and FsspecSyncer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

from trialsync import s3_upload, tasks
from trialsync.ledger import Stat
from trialsync.store import DEFAULT_PART_CONCURRENCY, DEFAULT_PART_SIZE, Store

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 256 * 2**20


class Gates:
    """Bounds the files in flight and the memory their uploads hold.

    A file smaller than two parts is read into memory whole, a larger one
    ``part_concurrency`` parts at a time; each upload reserves that much of ``memory``
    before it starts, so the sidecar's buffers never exceed it (one file larger than the
    whole budget still goes, alone).
    """

    def __init__(
        self,
        files: int = 32,
        memory: int = DEFAULT_MEMORY,
        part_size: int = DEFAULT_PART_SIZE,
        part_concurrency: int = DEFAULT_PART_CONCURRENCY,
    ) -> None:
        self._files = asyncio.Semaphore(files)
        self._memory = memory
        self._free = memory
        self._freed = asyncio.Condition()
        self._part_size = part_size
        self._part_concurrency = part_concurrency

    def cost(self, size: int) -> int:
        part = s3_upload.part_size_for(size, self._part_size)
        held = size if size < 2 * part else part * self._part_concurrency
        return min(held, self._memory)

    @contextlib.asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        cost = self.cost(size)
        async with self._files:
            async with self._freed:
                await self._freed.wait_for(lambda: self._free >= cost)
                self._free -= cost
            try:
                yield
            finally:
                async with self._freed:
                    self._free += cost
                    self._freed.notify_all()


async def upload_files(
    store: Store,
    root: str,
    todo: dict[str, Stat],
    gates: Gates,
    on_uploaded: Callable[[str, Stat], None],
) -> None:
    """Upload each root-relative path in ``todo``; call ``on_uploaded`` as each lands.

    Largest first, so long transfers start early and small files fill the gaps. A file
    that vanished meanwhile is skipped (its deletion is a change the journal reports). On
    the first failure the rest are cancelled and that failure is raised as itself, not as
    an ExceptionGroup, with a note of how many others failed.
    """

    async def one(rel: str, st: Stat) -> None:
        try:
            async with gates.slot(st[0]):
                await store.put_file(os.path.join(root, rel), rel)
        except FileNotFoundError:
            if os.path.lexists(os.path.join(root, rel)):  # noqa: ASYNC240 - one stat
                raise  # the remote side said not found: a real error
            log.info("file vanished before upload; skipped", extra={"path": rel})
            return
        on_uploaded(rel, st)

    ordered = sorted(todo.items(), key=lambda item: -item[1][0])
    await tasks.run_all([one(rel, st) for rel, st in ordered])
