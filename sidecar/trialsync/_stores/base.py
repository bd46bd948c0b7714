"""What the engine needs of the remote side: the ``Store`` protocol, what a listing
reports, the errors a store raises, and how large files are cut into parts.

Nothing heavy: the engine, the head-node client and every store import this module, and
a worker that syncs to the head loads no storage client through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

#: S3 allows 10,000 parts to an object; the other stores' chunked uploads follow suit.
MAX_PARTS = 10_000
#: Called with the operation of each request a store sends (``Metrics.count_request``;
#: ``trialsync.metrics.STORE_OPERATIONS`` names them).
RequestCounter = Callable[[str], None]


def ignore_request(operation: str) -> None:
    """The ``RequestCounter`` of a store nobody counts the requests of."""


#: The parts of one file in flight: about ``part_size * PART_CONCURRENCY`` of memory for
#: each large file being uploaded.
PART_CONCURRENCY = 4


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object as a listing reports it; ``mtime`` in epoch seconds when the store says."""

    size: int
    mtime: float | None = None
    checksum: str | None = None


class Store(Protocol):
    """What the engine needs of the remote side. ``verifiable``: ``list`` reports sizes.

    ``delete`` of a missing object is not an error. ``read_bytes`` and ``read_range``
    raise FileNotFoundError for a missing one.
    """

    verifiable: bool

    def url(self, rel: str) -> str: ...

    async def connect(self) -> None:
        """Build clients now, so the first upload does not pay for it."""

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        """Upload the first ``size`` bytes of ``local_path`` (its scanned size)."""

    async def put_bytes(self, rel: str, data: bytes) -> None: ...

    async def read_bytes(self, rel: str) -> bytes: ...

    async def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the object at ``rel``; FileNotFoundError
        for a missing one. Fewer bytes mean the object is shorter."""

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]: ...

    async def stat(self, rel: str) -> RemoteObject | None:
        """The object at ``rel``, or None if there is none (or the store cannot say)."""

    async def delete(self, rels: Iterable[str]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class WritesRanges(Protocol):
    """A store that writes a range of an object straight to a file, as it arrives."""

    async def read_range_into(self, rel: str, start: int, end: int, fd: int) -> int:
        """Write bytes ``start`` to ``end`` (exclusive) of ``rel`` at the same offsets of
        the open file ``fd``; the number of bytes written (fewer: the object is shorter)."""


class ObjectRefused(PermissionError):
    """The store refuses this one object for good; its other objects are not affected.

    Not a credentials problem (those are plain ``PermissionError``s and fail the whole
    sync): the head-node service refuses a path in a trial dir another worker holds, a
    path only the head writes, or an object over its size limit. Retrying cannot help, so
    only the checkpoint or artifact the object belongs to should fail, logged with its
    path. ``rel`` is the object's path; ``reason`` a short word for metrics.
    """

    def __init__(self, message: str, rel: str, reason: str) -> None:
        super().__init__(message)
        self.rel = rel
        self.reason = reason


def part_size_for(size: int, part_size: int) -> int:
    """The part size to use for a file of ``size`` bytes: at least ``part_size``, larger
    where ``MAX_PARTS`` parts would not hold the file."""
    return max(part_size, -(-size // MAX_PARTS))


def byte_range(start: int, end: int) -> str:
    """The HTTP Range header of bytes ``start`` to ``end`` (exclusive)."""
    return f"bytes={start}-{end - 1}"
