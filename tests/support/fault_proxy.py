"""A loopback proxy that injects faults into the traffic to an object store (or any server).

:class:`FaultProxy` listens on 127.0.0.1 (a free port) and forwards to a target such as
SeaweedFS. It runs its own event loop in a daemon thread (a ``LoopbackServer``), so it
serves sync and async tests alike; its counters are updated on that thread and may be read
from any thread. Its faults:

On any connection, on demand:

* :meth:`~FaultProxy.stall` ... :meth:`~FaultProxy.resume`: no byte moves in either
  direction, on new and open connections alike (new ones are accepted and held open), until
  ``resume``; then what was held is delivered, nothing is dropped. A client sees a silent,
  open peer, which is what a hung store looks like;
* :meth:`~FaultProxy.throttle`: the first request of each of the next ``n`` connections is
  answered S3's ``503 SlowDown`` (and the connection closed) instead of being forwarded.

Per request, drawn from a random generator seeded with ``seed``:

* with ``error_rate``: answered ``503 SlowDown`` or ``500 InternalError`` (S3's XML) without
  being forwarded;
* with ``reset_rate``: the connection is reset (RST), half the time before the request is
  forwarded and half the time after the store carried it out (the answer is lost);
* :meth:`~FaultProxy.stall_request`: the n-th request from then on is held that long (a
  store that hangs on one request); if the client gave up meanwhile, the request is
  dropped, as the bytes of a hung connection never reach the store;
* ``bytes_per_second``: request bodies are forwarded at that rate (a slow link).

How it forwards: a per-request fault needs each request whole, so with one configured
(``error_rate``, ``reset_rate`` or ``bytes_per_second``, or a ``stall_request`` made before
the connection opened) a connection's requests are read whole, answered ``100 Continue`` by
the proxy where asked, and forwarded one at a time (HTTP/1.1 keep-alive); a stall then holds
each request before it is read, before it is forwarded and before its answer is passed on.
Without one, the bytes of a connection are passed on as they come, unparsed, so the proxy
changes nothing but what ``stall`` and ``throttle`` ask for.

The ``stall_proxy_factory`` fixture makes proxies (without per-request faults) and stops
them at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support.loopback_server import LoopbackServer

_CHUNK = 64 * 1024
_SLOW_DOWN = (503, "Service Unavailable", "SlowDown", "Please reduce your request rate.")
_ERRORS = (
    _SLOW_DOWN,
    (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
)


class FaultProxy(LoopbackServer):
    """Forward 127.0.0.1:``port`` to ``target_host:target_port``, with the faults asked for.

    Not restartable once stopped.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        seed: int = 0,
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
        self.connections_accepted = 0
        self.bytes_forwarded = 0  # both ways
        self.requests = 0  # seen by the per-request faults
        self.errors = 0
        self.resets = 0
        self.stalls = 0  # requests held by stall_request
        self.stalled_requests: list[str] = []  # their request lines
        self.throttled = 0
        self._random = random.Random(seed)
        self._stall_at: int | None = None
        self._stall_seconds = 0.0
        self._throttle = 0
        self._flowing: asyncio.Event | None = None

    # ------------------------------------------------------------------ on demand

    def stall(self) -> None:
        """Stop forwarding (new and open connections) until :meth:`resume`."""
        self._call(lambda flowing: flowing.clear())

    def resume(self) -> None:
        """Forward again; what was held during the stall is delivered, nothing is dropped."""
        self._call(lambda flowing: flowing.set())

    def throttle(self, connections: int) -> None:
        """Answer the first request of each of the next ``connections`` new connections
        with S3's ``503 SlowDown`` (then close it) instead of forwarding it."""
        self._throttle = connections

    def stall_request(self, after: int, seconds: float) -> None:
        """Hold the ``after``-th request from now for ``seconds`` before forwarding it."""
        self._stall_at = self.requests + after
        self._stall_seconds = seconds

    def faults(self) -> dict[str, int]:
        """The per-request faults injected so far."""
        return {
            "requests": self.requests,
            "5xx": self.errors,
            "resets": self.resets,
            "stalls": self.stalls,
        }

    # ------------------------------------------------------------------ internals

    def _call(self, fn: Callable[[asyncio.Event], None]) -> None:
        if self._loop is None or self._flowing is None:
            raise RuntimeError("FaultProxy not started")
        # Run on the proxy's loop and wait, so the state has changed when this returns.
        done = threading.Event()
        flowing = self._flowing

        def apply() -> None:
            fn(flowing)
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(timeout=10)

    async def _opened(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    def _per_request(self) -> bool:
        return bool(
            self.error_rate
            or self.reset_rate
            or self.bytes_per_second is not None
            or self._stall_at is not None
        )

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        writers: list[asyncio.StreamWriter] = [client_w]
        try:
            assert self._flowing is not None
            # Not even the target is dialled while stalled: the client just waits.
            await self._flowing.wait()
            if self._throttle > 0:
                self._throttle -= 1
                if await _read_request(client_r, client_w) is not None:
                    self.throttled += 1  # before the answer, which the client may act on
                    await _answer_error(client_w, _SLOW_DOWN)
                return
            if self._per_request():
                await self._forward_requests(client_r, client_w, writers)
            else:
                up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
                writers.append(up_w)
                await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a side went away; closing both below is all there is to do
        finally:
            for writer in writers:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass bytes on as they come, one way, holding them while stalled."""
        assert self._flowing is not None
        while True:
            # Gate before reading (bytes stay in the kernel buffer) and again before
            # writing (a stall that began mid-read still holds this chunk back).
            await self._flowing.wait()
            data = await reader.read(_CHUNK)
            if not data:
                # Half-close: pass EOF on so request/response framing still works.
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
            self.bytes_forwarded += len(data)

    async def _forward_requests(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        writers: list[asyncio.StreamWriter],
    ) -> None:
        """Forward whole requests one at a time, with the per-request faults."""
        assert self._flowing is not None
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            await self._flowing.wait()
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
                self.stalled_requests.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
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
            await self._flowing.wait()
            if upstream is None:
                upstream = await asyncio.open_connection(self.target_host, self.target_port)
                writers.append(upstream[1])
            up_r, up_w = upstream
            up_w.write(head)
            await self._send_body(up_w, body)
            self.bytes_forwarded += len(head) + len(body)
            response, close = await _read_response(up_r, method)
            if reset_after:
                _reset(client_w)
                return
            await self._flowing.wait()
            client_w.write(response)
            await client_w.drain()
            self.bytes_forwarded += len(response)
            if close:
                return

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


@pytest.fixture
def stall_proxy_factory() -> Iterator[Callable[[str, int], FaultProxy]]:
    """Return ``make(target_host, target_port) -> FaultProxy`` (started, no per-request
    faults: bytes pass as they come until ``stall()``); all are stopped after the test."""
    proxies: list[FaultProxy] = []

    def make(target_host: str, target_port: int) -> FaultProxy:
        proxy = FaultProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


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
