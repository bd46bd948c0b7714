"""HTTP endpoints of the sidecar: health, readiness, metrics, sync status and an explicit
sync trigger."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trialsync._process import storage_api
from trialsync._util.http_site import serve
from trialsync.metrics import Metrics

# The handlers answer at once; stopping must not hold the SIGTERM budget (aiohttp waits
# 60 s for open requests by default).
SHUTDOWN_TIMEOUT = 1.0
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


async def start(
    addr: str,
    metrics: Metrics,
    is_ready: Callable[[], bool],
    request_sync: Callable[[], Awaitable[None]],
    storage: storage_api.StorageView | None = None,
    waiting: Callable[[], str] = lambda: "no successful sync yet",
    status: Callable[[], dict[str, Any]] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve on ``host:port`` (port 0 picks one); returns the runner and the bound port.

    ``GET /healthz``: 200 while the process serves. ``GET /readyz``: 200 after the first
    successful sync, 503 before, saying what it waits for (``waiting``: a restore's
    progress). ``GET /metrics``: Prometheus text. ``GET /status``: the JSON document
    ``status`` gives (``sync_status``: synced, lagging, failing or starting), which the
    operator polls from the pod's IP. ``POST /sync`` (from
    localhost only): 202 once ``request_sync`` has taken note of the pending checkpoints
    (they are complete; a checkpoint started after the answer is not), sync now. With
    ``storage``, the storage API too (``storage_api``, localhost only).
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text=waiting() + "\n")

    async def metrics_text(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def sync_state(_: web.Request) -> web.Response:
        assert status is not None
        return web.json_response(status(), headers={"Cache-Control": "no-store"})

    async def sync(request: web.Request) -> web.Response:
        # Only the pod itself (the trainer shares its network namespace) may declare its
        # checkpoints complete; anyone else could get half-written ones published.
        if not from_this_pod(request.remote):
            return web.Response(status=403, text="POST /sync is accepted from localhost only\n")
        await request_sync()
        return web.Response(status=202, text="sync requested\n")

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_text),
            web.post("/sync", sync),
        ]
    )
    if status is not None:
        app.add_routes([web.get("/status", sync_state)])
    if storage is not None:
        app.add_routes(storage_api.routes(storage, lambda r: from_this_pod(r.remote)))
    return await serve(app, addr, shutdown_timeout=SHUTDOWN_TIMEOUT)


def from_this_pod(remote: str | None) -> bool:
    """Whether a peer address is the pod's own loopback: 127.0.0.1 or ::1, also as an
    IPv4-mapped address (how a dual-stack listener on ``[::]`` sees an IPv4 client).

    Only those two addresses: another address in 127.0.0.0/8 is not assumed to be the pod.
    """
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in _LOOPBACK
