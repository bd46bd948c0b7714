"""Concurrent uploads of many files, shared by the sync engine and FsspecSyncer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from trialsync.ledger import Stat
from trialsync.store import Store

# Files at or above this size use multipart uploads; fewer of them run at once so memory
# stays bounded (see store.DEFAULT_PART_SIZE).
LARGE_FILE = 32 * 2**20


class Gates:
    """How many small and large files may be in flight at once."""

    def __init__(self, files: int = 32, large_files: int = 4) -> None:
        self.small = asyncio.Semaphore(files)
        self.large = asyncio.Semaphore(large_files)


async def upload_files(
    store: Store,
    root: str,
    todo: dict[str, Stat],
    gates: Gates,
    on_uploaded: Callable[[str, Stat], None],
) -> None:
    """Upload each root-relative path in ``todo``; call ``on_uploaded`` as each lands.

    Largest first, so long transfers start early and small files fill the gaps. On the
    first failure the rest are cancelled and that failure is raised as itself (not as an
    ExceptionGroup), with a note of how many others failed.
    """

    async def one(rel: str, st: Stat) -> None:
        async with gates.large if st[0] >= LARGE_FILE else gates.small:
            await store.put_file(os.path.join(root, rel), rel)
        on_uploaded(rel, st)

    try:
        async with asyncio.TaskGroup() as group:
            for rel, st in sorted(todo.items(), key=lambda item: -item[1][0]):
                group.create_task(one(rel, st))
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if len(failed.exceptions) > 1:
            first.add_note(f"{len(failed.exceptions) - 1} more uploads failed")
        raise first from None
