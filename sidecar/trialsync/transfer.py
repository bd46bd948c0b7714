"""Concurrent uploads of many files, shared by the sync engine and FsspecSyncer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from trialsync.ledger import Stat
from trialsync.store import DEFAULT_PART_CONCURRENCY, DEFAULT_PART_SIZE, Store

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 256 * 2**20


class Gates:
    """Bounds the files in flight and the memory their uploads hold.

    s3fs reads a file smaller than two parts into memory whole, and a larger one
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
        self._multipart_cost = part_size * part_concurrency
        self._single_put_limit = 2 * part_size

    def cost(self, size: int) -> int:
        held = size if size < self._single_put_limit else self._multipart_cost
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
    await run_all([one(rel, st) for rel, st in ordered])


async def run_all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; on the first failure cancel the rest and raise it.

    The failure is raised as itself, not as an ExceptionGroup, so logs and callers see
    the real error, with a note of how many others failed.
    """
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if len(failed.exceptions) > 1:
            first.add_note(f"{len(failed.exceptions) - 1} more operations failed")
        raise first from None
