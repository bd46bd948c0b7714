"""``/healthz`` and ``/readyz`` for the kubelet's probes, and ``/metrics`` for Prometheus.

Ready means this replica can answer admissions correctly: the SyncConfig index is
populated, a serving certificate is loaded and the webhook listener is up. Until then
the Service routes no admission here. ``/metrics`` answers whether ready or not (a
standby replica still serves admissions and counts them).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from trialsync_operator.metrics import CONTENT_TYPE_LATEST, Metrics


async def serve(
    addr: str, port: int, ready: Callable[[], bool], metrics: Metrics | None = None
) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: index, certificate or listener\n")

    routes = [web.get("/healthz", healthz), web.get("/readyz", readyz)]
    if metrics is not None:
        exported = metrics

        async def scrape(_: web.Request) -> web.Response:
            response = web.Response(body=exported.render())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        routes.append(web.get("/metrics", scrape))
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, addr or None, port).start()
    return runner
