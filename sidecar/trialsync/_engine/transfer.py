"""Concurrent uploads of many files, shared by the sync engine and FsspecSyncer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

from trialsync import contract
from trialsync._stores.base import PART_CONCURRENCY, ObjectRefused, Store, part_size_for
from trialsync._util import local_files, tasks
from trialsync._util.local_files import FileFailure, Stat

log = logging.getLogger(__name__)


class Gates:
    """Bounds the files in flight and the memory their uploads hold.

    A file smaller than two parts is read into memory whole, a larger one
    ``part_concurrency`` parts at a time; each upload reserves that much of ``memory``
    before it starts, so the sidecar's buffers never exceed it (one file larger than the
    whole budget still goes, alone). Uploads read the scanned size and no more, so a file
    that grows meanwhile does not break the bound.
    """

    def __init__(
        self,
        files: int = contract.FILES_IN_FLIGHT.default,
        memory: int = contract.UPLOAD_MEMORY.default,
        part_size: int = contract.PART_SIZE.default,
        part_concurrency: int = PART_CONCURRENCY,
    ) -> None:
        self.files = files
        self._files = asyncio.Semaphore(files)
        self._memory = memory
        self._free = memory
        self._freed = asyncio.Condition()
        self._part_size = part_size
        self._part_concurrency = part_concurrency

    def cost(self, size: int) -> int:
        part = part_size_for(size, self._part_size)
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
) -> dict[str, FileFailure]:
    """Upload each root-relative path in ``todo`` as scanned; call ``on_uploaded`` as each lands.

    Largest first, so long transfers start early and small files fill the gaps. A file
    that cannot be sent as scanned (deleted, changed, unreadable) or that the store refuses
    alone fails alone: it is returned with the reason and the others go on. A failure of
    the store cancels the rest and is raised as itself, not as an ExceptionGroup.
    """
    failures: dict[str, FileFailure] = {}

    async def one(item: tuple[str, Stat]) -> None:
        rel, st = item
        path = os.path.join(root, rel)
        try:
            async with gates.slot(st[0]):
                await store.put_file(path, rel, st[0])
        except ObjectRefused as exc:
            failures[rel] = FileFailure(local_files.REFUSED, str(exc))
            return
        except Exception as exc:
            failure = await asyncio.to_thread(local_files.diagnose, path, st, exc)
            if failure is None:
                raise  # the file is fine: the store failed
            failures[rel] = failure
            return
        on_uploaded(rel, st)

    ordered = sorted(todo.items(), key=lambda item: -item[1][0])
    await tasks.bounded(gates.files, ordered, one)
    return failures
