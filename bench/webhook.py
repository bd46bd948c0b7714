"""The operator under load: webhook latency, pod creation rate, memory with many SyncConfigs.

Against the test control plane (etcd + kube-apiserver on loopback) and the real
``trialsync-operator`` process:

* **latency**: AdmissionReviews sent straight to the mutating webhook over one kept-alive
  TLS connection, as an apiserver sends them; p50/p99 of the round trip, which includes
  kopf's handling, the index lookup, the injection and the JSON patch.
* **pods/s**: pods created through the apiserver by ``--clients`` concurrent clients, in
  a namespace whose pods opt in (each one goes through the webhook and is injected) and
  with the opt-in label left off (the webhook is never called); the ratio is the cost the
  webhook adds to pod creation.
* **the floors**: the same pod creation through the cheapest webhooks there are, each an
  aiohttp process of its own: one answers "allowed" with no patch, one answers every pod
  with the very patch trialsync computes for it (precomputed, no lookup, no kopf). They
  tell what the apiserver spends on calling any webhook, and on storing pods made twice
  as large by a sidecar, apart from what trialsync's own work adds. On this machine the
  apiserver, etcd, the clients and the webhook share two cores, so every millisecond of
  CPU a webhook costs lowers the rate.
* **RSS**: the operator's resident memory once it has indexed and reconciled
  ``--syncconfigs`` SyncConfigs.

Targets: p99 at most 5 ms; pod creation with the webhook at least 90 % of the rate
without it; at most 150 MiB of RSS with 1,000 SyncConfigs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import socket
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import jsonpatch
from kubernetes import client
from tests.support.control_plane import Kube, start_control_plane
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    Operator,
    delete_webhooks,
    pod_admission_review,
    start_operator,
)
from tests.support.pods import opted_in_pod, syncconfig
from tests.support.processes import free_port
from tests.support.sidecar_process import wait_for
from tests.support.webhook import WebhookTLS, mutating_webhook_configuration

from bench import common
from trialsync_operator import injection, names
from trialsync_operator.injection import Defaults
from trialsync_operator.settings import DEFAULT_IMAGE, DEFAULT_SCHEMES
from trialsync_operator.syncconfig import SidecarImage, view_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", type=int, default=5000, help="webhook: requests timed (5000)")
    parser.add_argument("--pods", type=int, default=400, help="webhook: pods created per run (400)")
    parser.add_argument("--clients", type=int, default=8, help="webhook: concurrent clients (8)")
    parser.add_argument(
        "--syncconfigs", type=int, default=1000, help="webhook: SyncConfigs for the RSS (1000)"
    )


def _pod(name: str, labelled: bool) -> dict[str, Any]:
    return opted_in_pod(name, "exp", labelled=labelled)


def _syncconfig(name: str) -> str:
    return json.dumps(syncconfig(name, {"uploadDir": f"s3://bucket/{name}"}))


async def _latency(operator: Operator, ca: str, namespace: str, count: int) -> list[float]:
    review = pod_admission_review(_pod("", True), namespace)
    body = json.dumps(review).encode()
    context = ssl.create_default_context(cadata=ca)
    url = f"https://127.0.0.1:{operator.webhook_port}/mutate-pods"
    timings = []
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(count + 100):
            started = time.perf_counter()
            async with session.post(url, data=body) as response:
                answer = await response.json()
            elapsed = time.perf_counter() - started
            if not answer["response"].get("patch"):
                raise RuntimeError(f"the webhook did not inject: {answer}")
            if i >= 100:  # warm-up: connection, first handler calls
                timings.append(elapsed)
    return timings


def _create_pods(
    kube: Kube,
    namespace: str,
    count: int,
    clients: int,
    labelled: bool = False,
    make: Callable[[str], dict[str, Any]] | None = None,
) -> float:
    """Pods per second created through the apiserver by ``clients`` threads (each pod
    ``make(name)``, by default the benchmark's pod, opted in or not)."""
    api = kube.api_client()
    core = client.CoreV1Api(api)
    prefix = uuid.uuid4().hex[:6]
    build = make or (lambda name: _pod(name, labelled))

    def create(i: int) -> None:
        # The answer is read but not turned into model objects: that is the client's CPU,
        # which grows with the pod, not the apiserver's.
        response = core.create_namespaced_pod(
            namespace, build(f"{prefix}-{i}"), _preload_content=False
        )
        response.read()
        response.release_conn()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create, range(min(clients * 4, count))))  # warm-up, not timed
        started = time.perf_counter()
        list(pool.map(create, range(clients * 4, clients * 4 + count)))
        elapsed = time.perf_counter() - started
    api.close()
    return count / elapsed


STATIC_WEBHOOK = """
import json, ssl, sys
from aiohttp import web
extra = json.loads(sys.argv[4])
async def review(request):
    uid = (await request.json())["request"]["uid"]
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                              "response": {"uid": uid, "allowed": True, **extra}})
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[2], sys.argv[3])
app = web.Application()
app.add_routes([web.post("/{path:.*}", review)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_context=context, print=None)
"""


def _static_webhook_rate(
    kube: Kube, tmp: Path, namespace: str, args: argparse.Namespace, answer: dict[str, str]
) -> float:
    """Pods/s through a webhook process that gives every pod the same ``answer``."""
    tls = WebhookTLS()
    cert, key = tmp / "null.crt", tmp / "null.key"
    tls.cert.cert_chain_pems[0].write_to_path(str(cert))
    tls.cert.private_key_pem.write_to_path(str(key))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", STATIC_WEBHOOK, str(port), str(cert), str(key), json.dumps(answer)]
    )
    name = "trialsync-bench-null"
    try:
        wait_for(lambda: _listening(port), 30, what="the null webhook")
        config = mutating_webhook_configuration(
            name,
            url=f"https://127.0.0.1:{port}/mutate",
            ca_bundle=tls.ca_bundle,
            object_selector={"matchLabels": {names.INJECT_LABEL: "true"}},
        )
        kube.kubectl("apply", "-f", "-", input=json.dumps(config))
        rates = [
            _create_pods(kube, namespace, args.pods, args.clients, labelled=True) for _ in range(2)
        ]
        return statistics.median(rates)
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        server.terminate()
        server.wait()


def _trialsync_patch(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    """The JSONPatch trialsync gives the benchmark's pods (the ServiceAccount plugin adds
    its volume only after the mutating webhooks, so they see the pod as created)."""
    stored = kube.kubectl("get", "syncconfig", "exp", "-n", namespace, "-o", "json").stdout
    view = view_of(json.loads(stored), SidecarImage(DEFAULT_IMAGE, frozenset(DEFAULT_SCHEMES)))
    pod = _pod("sample", True)
    result = injection.plan(pod, namespace, lambda ns, name: view, Defaults(image=DEFAULT_IMAGE))
    assert result.patch is not None
    return injection.json_patch(pod, result.patch)


def _pre_injected(ops: list[dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """Pods that already carry the sidecar and do not opt in: the same stored object, no
    webhook call."""

    def make(name: str) -> dict[str, Any]:
        pod = jsonpatch.apply_patch(_pod(name, True), ops)
        del pod["metadata"]["labels"][names.INJECT_LABEL]
        result: dict[str, Any] = pod
        return result

    return make


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("webhook") as tmp:
        kube = start_control_plane(tmp / "kube")
        try:
            return _run(kube, tmp, args)
        finally:
            kube.stop()


def _run(kube: Kube, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    namespace = kube.create_namespace("bench")
    kube.kubectl(
        "apply", "-f", str(Path(__file__).resolve().parents[1] / "crds" / "syncconfig.yaml")
    )
    configs = "\n---\n".join(_syncconfig(f"c{i:04d}") for i in range(args.syncconfigs - 1))
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=configs, timeout=600)
    operator = start_operator(kube, tmp / "operator", extra_args=["--log-level", "warning"])
    try:
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=_syncconfig("exp"))
        wait_for(
            lambda: json.loads(
                kube.kubectl("get", "syncconfig", "exp", "-n", namespace, "-o", "json").stdout
            ).get("status"),
            60,
            what="the operator's status on the last SyncConfig",
        )
        secret = json.loads(
            kube.kubectl(
                "get", "secret", "trialsync-webhook-tls", "-n", OPERATOR_NAMESPACE, "-o", "json"
            ).stdout
        )
        ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
        time.sleep(5)  # let the leader reconcile all of them before reading the RSS
        rss = _rss_mib(operator.proc.pid)
        timings = asyncio.run(_latency(operator, ca, namespace, args.reviews))
        without = _create_pods(kube, namespace, args.pods, args.clients, labelled=False)
        with_webhook = _create_pods(kube, namespace, args.pods, args.clients, labelled=True)
        without_again = _create_pods(kube, namespace, args.pods, args.clients, labelled=False)
        with_again = _create_pods(kube, namespace, args.pods, args.clients, labelled=True)
        rss_after = _rss_mib(operator.proc.pid)
    finally:
        operator.stop()
        delete_webhooks(kube)
    floor = _static_webhook_rate(kube, tmp, namespace, args, {})
    ops = _trialsync_patch(kube, namespace)
    answer = {
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    same_patch = _static_webhook_rate(kube, tmp, namespace, args, answer)
    injected_size = statistics.median(
        [
            _create_pods(kube, namespace, args.pods, args.clients, make=_pre_injected(ops))
            for _ in range(2)
        ]
    )
    ms = sorted(t * 1000 for t in timings)
    base = statistics.median([without, without_again])
    hooked = statistics.median([with_webhook, with_again])
    return {
        "latency_ms": {
            "p50": ms[len(ms) // 2],
            "p90": ms[int(len(ms) * 0.9)],
            "p99": ms[int(len(ms) * 0.99)],
            "max": ms[-1],
            "count": len(ms),
        },
        "pods_per_s": {
            "without_webhook": [without, without_again],
            "with_webhook": [with_webhook, with_again],
            "ratio": hooked / base,
            "pre_injected_without_webhook": injected_size,
            "allow_only_webhook": floor,
            "same_patch_webhook": same_patch,
            "ratio_to_same_patch_webhook": hooked / same_patch,
        },
        "rss_mib": {"syncconfigs": args.syncconfigs, "indexed": rss, "after_load": rss_after},
    }


def report(result: dict[str, Any]) -> str:
    lat, pods, rss = result["latency_ms"], result["pods_per_s"], result["rss_mib"]
    return "\n".join(
        [
            f"webhook latency over {lat['count']} reviews: p50 {lat['p50']:.2f} ms, "
            f"p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms "
            "(target p99 <= 5 ms)",
            "pods/s through the apiserver: without the webhook "
            + ", ".join(f"{v:.1f}" for v in pods["without_webhook"])
            + "; with it "
            + ", ".join(f"{v:.1f}" for v in pods["with_webhook"])
            + f"; ratio {pods['ratio']:.1%} (target >= 90%)",
            f"  pods already carrying the sidecar, no webhook: "
            f"{pods['pre_injected_without_webhook']:.1f} pods/s (the larger pod's own cost)",
            f"  floors: an allow-only webhook {pods['allow_only_webhook']:.1f} pods/s, one giving "
            f"the same patch precomputed {pods['same_patch_webhook']:.1f} pods/s; trialsync "
            f"reaches {pods['ratio_to_same_patch_webhook']:.1%} of the latter",
            f"operator RSS with {rss['syncconfigs']} SyncConfigs: {rss['indexed']:.1f} MiB "
            f"indexed, {rss['after_load']:.1f} MiB after the load (target <= 150 MiB)",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parsed = parser.parse_args()
    outcome = run(parsed)
    print(report(outcome))
    print(common.write_results("webhook", {"machine": common.machine(), "webhook": outcome}))
