"""Downloading one object to a local file with parallel ranged reads.

A file of more than one part is read in ``part_size`` ranges, several at once, each
written at its offset (``os.pwrite``): the parts of every file being restored share one
bound, and small files another (``Gates``), which also bound the memory held (a part is
held until it is written).
A store that can (``WritesRanges``: S3 through the lean client, whose worker threads
write from the socket into the file) writes each chunk as it arrives, so no part is ever
held whole. The file gets its mtime before it is handed
back; the caller writes it aside and renames it into place. The blocking
calls run in ``pool``: a restore keeps many files in flight, more than the default
executor's few threads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Executor

from trialsync._stores.base import Store, WritesRanges
from trialsync._util import local_files, tasks

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
#: A file up to this size is read whole, in a lane of its own (``Gates``).
SMALL_FILE = 2**20
SMALL_FILES_IN_FLIGHT = 32


class Gates:
    """Bounds the reads in flight, in two lanes: the parts of large files, and small files.

    A small file costs the client CPU (a request, a file opened and closed) where a large
    file's parts cost the kernel and the store: side by side, both keep busy, where small
    files waiting behind large ones would be left for a tail of their own. Each bound is
    also one of memory, for a store that returns a read whole (a part, or a small file, is
    held until written).
    """

    def __init__(self, parts: int, small_files: int = SMALL_FILES_IN_FLIGHT) -> None:
        self.parts = asyncio.Semaphore(max(1, parts))
        self.small_files = asyncio.Semaphore(max(1, small_files))

    def for_size(self, size: int) -> asyncio.Semaphore:
        return self.small_files if size <= SMALL_FILE else self.parts


class ShortRead(OSError):
    """The store returned fewer bytes than the listing promised: the object changed."""


def parts_of(size: int, part_size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` ranges that cover ``size`` bytes, ``part_size`` each."""
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


async def fetch(
    store: Store,
    rel: str,
    path: str,
    size: int,
    part_size: int,
    gates: Gates,
    progress: Callable[[int], None],
    pool: Executor | None = None,
    mtime_ns: int | None = None,
) -> None:
    """Write the object ``rel`` (``size`` bytes, as listed) to ``path``, made or truncated,
    with ``mtime_ns`` (if given)."""
    loop = asyncio.get_running_loop()
    gate = gates.for_size(size)
    # A Protocol check costs microseconds: once per file, not per part.
    ranged = store if isinstance(store, WritesRanges) else None
    # Opening a new file and setting its times are metadata calls of microseconds: made
    # here, where a thread hop per small file would cost more than the call.
    fd = os.open(path, FLAGS, 0o666)
    try:

        async def part(start: int, end: int) -> None:
            async with gate:
                if ranged is not None:
                    got = await ranged.read_range_into(rel, start, end, fd)
                else:
                    data = await store.read_range(rel, start, end)
                    got = len(data)
                    await loop.run_in_executor(pool, local_files.write_at, fd, data, start)
            if got != end - start:
                raise ShortRead(
                    f"{store.url(rel)}: expected bytes {start}-{end - 1} of {size}, got "
                    f"{got} bytes: the object changed during the restore"
                )
            progress(end - start)

        await tasks.run_all([part(start, end) for start, end in parts_of(size, part_size)])
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)
