"""An HTTP/1.1 proxy on loopback that injects faults into an object store's traffic.

:class:`FaultProxy` forwards requests one at a time per connection (keep-alive) to a
target such as SeaweedFS. Each request is read whole first; then, drawn from a seeded
random generator:

* with ``error_rate``: answered ``503 SlowDown`` or ``500 InternalError`` (S3's XML) without
  being forwarded;
* with ``reset_rate``: the connection is reset (RST), half the time before the request is
  forwarded and half the time after the store carried it out (the answer is lost);
* ``stall_request(n, seconds)``: the n-th request from then on is held that long (a store
  that hangs); if the client gave up meanwhile, the request is dropped, as the bytes of a
  hung connection never reach the store;
* ``bytes_per_second``: request bodies are forwarded at that rate (a slow link).

It runs its own event loop in a daemon thread (a ``LoopbackServer``). Counters are
updated on that thread and may be read from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

from tests.support.loopback_server import LoopbackServer

_CHUNK = 64 * 1024
_ERRORS = (
    (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
)


class FaultProxy(LoopbackServer):
    def __init__(
        self,
        target_host: str,
        target_port: int,
        seed: int,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        bytes_per_second: float | None = None,
    ) -> None:
        super().__init__()
        self.target_host = target_host
        self.target_port = target_port
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.bytes_per_second = bytes_per_second
        self.requests = 0
        self.errors = 0
        self.resets = 0
        self.stalls = 0
        self.stalled: list[str] = []  # request lines held
        self._random = random.Random(seed)
        self._stall_at: int | None = None
        self._stall_seconds = 0.0

    def stall_request(self, after: int, seconds: float) -> None:
        """Hold the ``after``-th request from now for ``seconds`` before forwarding it."""
        self._stall_at = self.requests + after
        self._stall_seconds = seconds

    def faults(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "5xx": self.errors,
            "resets": self.resets,
            "stalls": self.stalls,
        }

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await _read_request(client_r, client_w)
                if request is None:
                    return
                head, body, method = request
                self.requests += 1
                reset_after = False
                if self.requests == self._stall_at:
                    # The stalled request gets no other fault: an error answer or a reset
                    # would end it first, and the stall would never happen.
                    self.stalls += 1
                    self.stalled.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                    await asyncio.sleep(self._stall_seconds)
                    if await _hung_up(client_r):
                        return
                else:
                    fault = self._random.random()
                    if fault < self.error_rate:
                        self.errors += 1
                        await _answer_error(client_w, self._random.choice(_ERRORS))
                        return
                    if fault < self.error_rate + self.reset_rate:
                        self.resets += 1
                        if self._random.random() < 0.5:
                            _reset(client_w)
                            return
                        reset_after = True
                if upstream is None:
                    upstream = await asyncio.open_connection(self.target_host, self.target_port)
                up_r, up_w = upstream
                up_w.write(head)
                await self._send_body(up_w, body)
                response, close = await _read_response(up_r, method)
                if reset_after:
                    _reset(client_w)
                    return
                client_w.write(response)
                await client_w.drain()
                if close:
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a side went away
        finally:
            for writer in (client_w, upstream[1] if upstream else None):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

    async def _send_body(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        if self.bytes_per_second is None:
            writer.write(body)
            await writer.drain()
            return
        for start in range(0, len(body), _CHUNK):
            chunk = body[start : start + _CHUNK]
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(len(chunk) / self.bytes_per_second)


async def _hung_up(reader: asyncio.StreamReader) -> bool:
    """Whether the client closed its side (it sends nothing else while it waits)."""
    try:
        return await asyncio.wait_for(reader.read(1), 0.05) == b""
    except TimeoutError:
        return False


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower().decode()] = value.strip().decode()
    return out


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, bytes, str] | None:
    """(head, body, method) of the next request; None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    headers = _headers(head)
    method = head.split(b" ", 1)[0].decode()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        head = b"\r\n".join(
            line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:")
        )
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head, body, method


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bool]:
    """One whole response, and whether the connection closes after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = _headers(head)
    close = headers.get("connection", "").lower() == "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return head, close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
        # Re-framed with a length: the chunks are joined.
        head = b"\r\n".join(
            line
            for line in head.split(b"\r\n")
            if not line.lower().startswith(b"transfer-encoding:")
        )
        head = head[: -len(b"\r\n")] + f"Content-Length: {len(body)}\r\n\r\n".encode()
        return head + body, close
    if "content-length" in headers:
        return head + await reader.readexactly(int(headers["content-length"])), close
    return head + await reader.read(), True


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _answer_error(writer: asyncio.StreamWriter, error: tuple[int, str, str, str]) -> None:
    status, reason, code, message = error
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
