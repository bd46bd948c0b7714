"""The sidecar's HTTP endpoints: health, readiness, metrics, and the local-only trigger."""

from __future__ import annotations

import http.client
import socket

import pytest

from tests.support.requirements import unavailable
from trialsync._process import status_server
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


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack listener on [::]
        ("127.0.0.2", False),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("", False),
        (None, False),
    ],
)
def test_only_the_pods_own_loopback_may_trigger(peer: str | None, trusted: bool) -> None:
    assert status_server.from_this_pod(peer) is trusted


async def test_an_ipv6_address_is_given_in_brackets() -> None:
    import asyncio

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        unavailable(f"no IPv6 loopback on this machine: {exc}")
    runner, port = await status_server.start("[::1]:0", Metrics(), lambda: True, _no_sync)
    try:
        conn = http.client.HTTPConnection("::1", port, timeout=5)
        status = await asyncio.to_thread(_status, conn, "POST", "/sync")
        assert status == 202  # ::1 is the pod itself
    finally:
        await runner.cleanup()


def _status(conn: http.client.HTTPConnection, method: str, path: str) -> int:
    conn.request(method, path)
    status = conn.getresponse().status
    conn.close()
    return status


async def _no_sync() -> None:
    pass
