"""A loopback TCP proxy that can be told to stop forwarding, for timeout tests.

:class:`StallProxy` listens on 127.0.0.1 (free port), forwards bytes both ways to a target,
and runs its own asyncio loop in a daemon thread (a ``LoopbackServer``), so it works under
sync and async tests.
:meth:`StallProxy.stall` freezes it: connections are still accepted and held open, but no
byte moves in either direction (existing connections included) until :meth:`resume`. A
client therefore sees a silent, open peer, which is what a hung object store looks like.

The ``stall_proxy_factory`` fixture creates proxies and closes them at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support.loopback_server import LoopbackServer

_CHUNK = 64 * 1024


class StallProxy(LoopbackServer):
    """Forward 127.0.0.1:``port`` to ``target_host:target_port``; stall/resume on demand.

    Counters (``connections_accepted``, ``bytes_forwarded``) are updated on the proxy thread
    and may be read from any thread. Not restartable once stopped.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__()
        self.target_host = target_host
        self.target_port = target_port
        self.connections_accepted = 0
        self.bytes_forwarded = 0
        self.throttled = 0
        self._throttle = 0
        self._stalled = False
        self._flowing: asyncio.Event | None = None

    # ------------------------------------------------------------------ public API

    @property
    def stalled(self) -> bool:
        return self._stalled

    def stall(self) -> None:
        """Stop forwarding bytes (new and existing connections) until :meth:`resume`."""
        self._stalled = True
        self._call(lambda ev: ev.clear())

    def resume(self) -> None:
        """Forward again; data held during the stall is delivered, nothing is dropped."""
        self._stalled = False
        self._call(lambda ev: ev.set())

    def throttle(self, connections: int) -> None:
        """Answer the first request of each of the next ``connections`` new connections
        with S3's ``503 SlowDown`` (then close it) instead of forwarding it."""
        self._throttle = connections

    # ------------------------------------------------------------------ internals

    def _call(self, fn: Callable[[asyncio.Event], None]) -> None:
        if self._loop is None or self._flowing is None:
            raise RuntimeError("StallProxy not started")
        # Run on the proxy loop and wait, so the state has changed when this returns.
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

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            assert self._flowing is not None
            # Do not even dial the target while stalled: the client just waits.
            await self._flowing.wait()
            if self._throttle > 0:
                self._throttle -= 1
                await _read_request(client_r)
                self.throttled += 1  # before the answer, which the client may act on at once
                await _answer_slow_down(client_w)
                return
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            await asyncio.gather(self._pump(client_r, upstream_w), self._pump(upstream_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass  # a side went away; closing both below is all there is to do
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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


SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?>"
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


async def _read_request(reader: asyncio.StreamReader) -> None:
    """Read one HTTP request: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)


async def _answer_slow_down(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
        + f"Content-Length: {len(SLOW_DOWN)}\r\nConnection: close\r\n\r\n".encode()
        + SLOW_DOWN
    )
    await writer.drain()


@pytest.fixture
def stall_proxy_factory() -> Iterator[Callable[[str, int], StallProxy]]:
    """Return ``make(target_host, target_port) -> StallProxy`` (started); all closed after."""
    proxies: list[StallProxy] = []

    def make(target_host: str, target_port: int) -> StallProxy:
        proxy = StallProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
