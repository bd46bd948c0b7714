"""A TCP server on 127.0.0.1 that runs its own asyncio loop in a daemon thread.

Subclasses implement ``_handle(reader, writer)`` for each connection; ``start()`` binds a
free port and returns once it listens, ``stop()`` closes the listener and every connection
and joins the thread. Working in a thread of its own, the server serves sync and async
tests alike. Not restartable once stopped.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any, Self

HOST = "127.0.0.1"


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, for clients that take an endpoint URL."""
        return f"http://{HOST}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _opened(self) -> None:
        """Runs on the server's loop once it listens (before ``start`` returns)."""

    def start(self) -> Self:
        """Bind the listening socket and start serving; returns self."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as e:
                error.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        name = f"{type(self).__name__}-{id(self):x}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._tracked, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        await self._opened()

    async def _tracked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
