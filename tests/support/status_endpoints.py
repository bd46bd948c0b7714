"""Many sidecars' ``GET /status`` endpoints, simulated by one process.

Pods on the test control plane never run (there is no node), so a test gives each pod a
``status.podIP`` of its own on the loopback network (``127.1.x.y``, see ``addresses``) and
this process answers ``GET /status`` on ``<that address>:<port>`` with the document the
test set for it, as the sidecar of that pod would (``trialsync._process.sync_status``). Only
the sidecars' endpoints are simulated: the operator that polls them is the real one.

The test drives it over a control port on 127.0.0.1: ``POST /set`` with ``{"ips": [...],
"document": {...}}`` sets what those addresses answer (an address never set answers
nothing: its port is closed, as a sidecar that is not up); ``GET /hits`` says how many
polls each address got.

    python -m tests.support.status_endpoints --port P --control-port C --count N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from kubernetes import client

from localcluster.control_plane import REPO_ROOT, Kube
from localcluster.processes import free_ports, stop
from tests.support.pods import opted_in_pod
from tests.support.sidecar_process import wait_for


def addresses(count: int) -> list[str]:
    """``count`` distinct loopback addresses, away from 127.0.0.x that other tests use."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(count)]


def document(
    state: str,
    newest: tuple[str, float] | None = None,
    oldest: tuple[str, float] | None = None,
    reason: str | None = None,
    period: float = 300,
) -> dict[str, Any]:
    """A ``GET /status`` document as a sidecar gives it."""
    now = time.time()
    return {
        "version": 1,
        "state": state,
        "duty": "upload",
        "sync_period": period,
        "now": now,
        "last_success": None if state == "failing" else now,
        "failing_since": now if state == "failing" else None,
        "failure_reason": reason,
        "newest_checkpoint": {"path": newest[0], "published_at": newest[1]} if newest else None,
        "oldest_unsynced": {"path": oldest[0], "since": oldest[1]} if oldest else None,
        "pending_checkpoints": 1 if oldest else 0,
        "pending_files": 0,
    }


def make_pods(
    kube: Kube,
    namespace: str,
    config: str,
    ips: Sequence[str | None],
    prefix: str = "p",
    clients: int = 8,
) -> list[str]:
    """Create one opted-in pod per entry of ``ips`` (through the webhook, which injects
    it), then give each its IP through the status subresource (None: none, as a pod not
    yet scheduled), phase Running. The pods' names, in order."""
    api = kube.api_client()
    core = client.CoreV1Api(api)
    pod_names = [f"{prefix}-{i}" for i in range(len(ips))]

    def create(i: int) -> None:
        body = opted_in_pod(pod_names[i], config, mount_path="/root/ray_results")
        _drain(core.create_namespaced_pod(namespace, body, _preload_content=False))
        ip = ips[i]
        if ip is not None:
            status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
            _drain(
                core.patch_namespaced_pod_status(
                    pod_names[i], namespace, status, _preload_content=False
                )
            )

    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(create, range(len(ips))))
    finally:
        api.close()
    return pod_names


def _drain(response: Any) -> None:
    """Read an answer not turned into model objects, and give its connection back."""
    response.read()
    response.release_conn()


class StatusEndpoints:
    """The process, started and stopped by the test."""

    def __init__(self, count: int, log_path: str) -> None:
        self.port, self.control_port = free_ports(2)
        self.ips = addresses(count)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.status_endpoints",
                *("--port", str(self.port), "--control-port", str(self.control_port)),
                *("--count", str(count)),
            ],
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, 60, what="the status endpoints")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"status endpoints exited with {self.proc.returncode}")
        try:
            self.hits()
        except OSError:
            return False
        return True

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def set(self, ips: Iterable[str], doc: dict[str, Any] | None) -> None:
        """What ``ips`` answer from now on (None: nothing, the port closed)."""
        self._call("POST", "/set", {"ips": list(ips), "document": doc})

    def hits(self) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", "/hits")
        return result

    def stop(self) -> None:
        stop(self.proc, timeout=10)
        self._log.close()


async def _serve(port: int, control_port: int, count: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    documents: dict[str, dict[str, Any]] = {}
    hits: dict[str, int] = {}
    sites: dict[str, web.TCPSite] = {}

    async def status(request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        ip = str(sockname[0]) if sockname else ""
        hits[ip] = hits.get(ip, 0) + 1
        doc = documents.get(ip)
        if doc is None:
            raise web.HTTPServiceUnavailable()
        return web.json_response({**doc, "now": time.time()})

    app = web.Application()
    app.add_routes([web.get("/status", status)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()

    async def set_documents(request: web.Request) -> web.Response:
        body = await request.json()
        for ip in body["ips"]:
            if body["document"] is None:
                documents.pop(ip, None)
                site = sites.pop(ip, None)
                if site is not None:
                    await site.stop()
            else:
                documents[ip] = body["document"]
                if ip not in sites:
                    sites[ip] = web.TCPSite(runner, ip, port, backlog=512)
                    await sites[ip].start()
        return web.json_response({"set": len(body["ips"])})

    async def get_hits(_: web.Request) -> web.Response:
        return web.json_response(hits)

    control = web.Application()
    control.add_routes([web.post("/set", set_documents), web.get("/hits", get_hits)])
    control_runner = web.AppRunner(control, access_log=None)
    await control_runner.setup()
    await web.TCPSite(control_runner, "127.0.0.1", control_port).start()
    print(f"serving {count} addresses on port {port}", flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.control_port, args.count))


if __name__ == "__main__":
    main()
