"""The sidecar's HTTP endpoints: health, readiness, metrics, and the local-only trigger."""

from __future__ import annotations

import http.client
import socket

from trialsync import status_server
from trialsync.metrics import Metrics


def request(port: int, method: str, path: str, source: str = "127.0.0.1") -> int:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.sock = sock
    conn.request(method, path)
    status = conn.getresponse().status
    conn.close()
    return status


async def test_endpoints_and_a_trigger_only_from_the_pod_itself() -> None:
    import asyncio

    ready = False
    triggers: list[int] = []

    async def trigger() -> None:
        triggers.append(1)

    runner, port = await status_server.start("127.0.0.1:0", Metrics(), lambda: ready, trigger)
    try:

        def call(method: str, path: str, source: str = "127.0.0.1") -> int:
            return request(port, method, path, source)

        run = asyncio.to_thread
        assert await run(call, "GET", "/healthz") == 200
        assert await run(call, "GET", "/readyz") == 503
        ready = True
        assert await run(call, "GET", "/readyz") == 200
        assert await run(call, "GET", "/metrics") == 200
        assert await run(call, "POST", "/sync") == 202
        # Another address (another pod, as far as the server can tell) may not trigger.
        assert await run(call, "POST", "/sync", "127.0.0.2") == 403
        assert triggers == [1]
    finally:
        await runner.cleanup()
