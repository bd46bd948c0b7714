"""An aiohttp application served on a ``host:port`` address."""

from __future__ import annotations

import ssl

from aiohttp import web


async def serve(
    app: web.Application,
    addr: str,
    shutdown_timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0 picks one); returns the runner and the port.

    An IPv6 host is written in brackets (``[::]:9746``). ``shutdown_timeout``: how long
    cleanup() waits for requests in progress. ``ssl_context``: serve HTTPS with it."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    host, _, port = addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    site = web.TCPSite(runner, host or "0.0.0.0", int(port), ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])
