"""A ``Store`` that is the head-node service (seed scenario 3: no upload dir).

Talks to ``trialsync.head_receiver`` over HTTP. Errors raise: 401/403 ``PermissionError``,
404 ``FileNotFoundError``, any other non-2xx ``HeadStoreError``; each message has the
method, URL, status and the receiver's answer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import IO, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from trialsync.head_receiver import MTIME_HEADER
from trialsync.ledger import RemoteObject

READ_CHUNK = 1 << 20
# No total timeout: a large checkpoint may take longer than any fixed bound, and the engine
# cancels a hung sync at syncTimeout. Connect and per-read stalls still fail fast enough.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)


class HeadStoreError(RuntimeError):
    """The receiver answered with an unexpected status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HeadStore:
    """Objects on the head node, addressed by rel paths under ``prefix``."""

    verifiable = True

    def __init__(
        self,
        head_url: str,
        token: str,
        prefix: str = "",
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.head_url = head_url.rstrip("/")
        self.prefix = prefix.strip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _full(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def url(self, rel: str) -> str:
        return f"{self.head_url}/v1/objects/{self._full(rel)}"

    def _object_url(self, rel: str) -> URL:
        # encoded=True: the path goes out exactly as quoted here (no dot-segment folding),
        # and characters Ray puts in trial names ("=", ",") survive the round trip.
        return URL(f"{self.head_url}/v1/objects/{quote(self._full(rel), safe='/')}", encoded=True)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the loop that runs the syncs.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def put_file(self, local_path: str, rel: str) -> None:
        """Stream ``local_path`` (never read whole) and keep its mtime on the head node."""
        handle = await asyncio.to_thread(open, local_path, "rb")
        try:
            st = os.fstat(handle.fileno())
            headers = {
                "Content-Length": str(st.st_size),
                MTIME_HEADER: str(st.st_mtime_ns),
                "Content-Type": "application/octet-stream",
            }
            # Exactly st_size bytes: a file that grows meanwhile must not overrun the length.
            body = _read_chunks(handle, st.st_size, local_path)
            await self._send("PUT", rel, data=body, headers=headers)
        finally:
            handle.close()

    async def put_bytes(self, rel: str, data: bytes) -> None:
        await self._send(
            "PUT", rel, data=data, headers={"Content-Type": "application/octet-stream"}
        )

    async def read_bytes(self, rel: str) -> bytes:
        async with self._client().get(self._object_url(rel)) as response:
            await _check(response)
            return await response.read()

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        """Every object at or below ``rel_prefix``, keyed relative to this store's prefix."""
        url = URL(f"{self.head_url}/v1/objects")
        params = {"prefix": self._full(rel_prefix)}
        async with self._client().get(url, params=params) as response:
            await _check(response)
            payload: dict[str, Any] = await response.json()
        cut = len(self.prefix) + 1 if self.prefix else 0
        return {
            rel[cut:]: RemoteObject(size=int(info["size"]), mtime=float(info["mtime"]))
            for rel, info in payload["objects"].items()
        }

    async def delete(self, rels: Iterable[str]) -> None:
        """Delete every object in ``rels``; missing ones are not an error."""
        async with asyncio.TaskGroup() as group:
            for rel in rels:
                group.create_task(self._send("DELETE", rel))

    async def connect(self) -> None:
        self._client()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _send(self, method: str, rel: str, **kwargs: Any) -> None:
        async with self._client().request(method, self._object_url(rel), **kwargs) as response:
            await _check(response)


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    body = (await response.text(errors="replace"))[:500].strip()
    message = f"{response.method} {response.url}: HTTP {response.status}: {body}"
    if response.status in (401, 403):
        raise PermissionError(message)
    if response.status == 404:
        raise FileNotFoundError(message)
    raise HeadStoreError(message, response.status)


async def _read_chunks(handle: IO[bytes], size: int, path: str) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        chunk = await asyncio.to_thread(handle.read, min(READ_CHUNK, left))
        if not chunk:
            # Shrunk while uploading: abort the request so the receiver discards the part.
            raise OSError(f"{path}: truncated while uploading ({size - left} of {size} bytes)")
        left -= len(chunk)
        yield chunk
