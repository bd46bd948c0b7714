"""``/healthz`` and ``/readyz`` for the kubelet's probes.

Ready means this replica can answer admissions correctly: the SyncConfig index is
populated, a serving certificate is loaded and the webhook listener is up. Until then
the Service routes no admission here.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def serve(addr: str, port: int, ready: Callable[[], bool]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: index, certificate or listener\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, addr or None, port).start()
    return runner
