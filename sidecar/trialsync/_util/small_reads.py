"""Reading small files off the event loop, several to a worker-thread hop.

A hop to a worker thread and back costs about 70 us of CPU here, ten times the read of a
small file from the page cache. Reads asked for in the same turn of the event loop (upload
workers whose answers came in together) go to one thread together, so a checkpoint of
thousands of small files does not pay a hop each. Memory: every caller has reserved the
file's size already (``transfer.Gates``), so a batch holds nothing unaccounted for.
"""

from __future__ import annotations

import asyncio
import functools
import weakref

from trialsync._util import local_files

SMALL = 2**20  # larger files are read alone: a batch must not hold small reads back
BATCH = 64

_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
    weakref.WeakKeyDictionary()
)


async def read_exact(path: str, size: int) -> bytes:
    """``local_files.read_exact(path, size)`` in a worker thread."""
    if size > SMALL:
        return await asyncio.to_thread(local_files.read_exact, path, size)
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = _Batcher(loop)
    return await batcher.read(path, size)


Due = tuple[str, int, "asyncio.Future[bytes]"]


class _Batcher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[Due] = []

    def read(self, path: str, size: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._due.append((path, size, future))
        if len(self._due) == 1:
            self._loop.call_soon(self._flush)  # after the others asked in this turn
        return future

    def _flush(self) -> None:
        due, self._due = self._due, []
        for start in range(0, len(due), BATCH):
            batch = due[start : start + BATCH]
            done = self._loop.run_in_executor(None, _read_batch, batch)
            done.add_done_callback(functools.partial(_deliver, batch))


def _read_batch(batch: list[Due]) -> list[bytes | BaseException]:
    results: list[bytes | BaseException] = []
    for path, size, future in batch:
        if future.cancelled():  # read racily: at worst a read that is thrown away
            results.append(b"")
            continue
        try:
            results.append(local_files.read_exact(path, size))
        except Exception as exc:
            results.append(exc)
    return results


def _deliver(batch: list[Due], finished: asyncio.Future[list[bytes | BaseException]]) -> None:
    outcome = finished.exception()
    results = finished.result() if outcome is None else [outcome] * len(batch)
    for (_, _, future), result in zip(batch, results, strict=True):
        if future.done():
            continue  # its reader was cancelled
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
