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
  with the very patch trialsync computes for it (precomputed, no lookup, no kopf); and the
  pods already carrying the sidecar, created with no webhook at all. They tell what the
  apiserver spends on calling any webhook, and on storing pods made larger by a sidecar,
  apart from what trialsync's own work adds. Each rate comes with the CPU time per pod of
  etcd, the apiserver, the webhook process and the clients, read from ``/proc``.
* **where the CPU is**: by default every process shares the machine's cores, so CPU a
  webhook costs is taken from the apiserver; ``--pin`` puts etcd and the apiserver on
  CPU 0 and the clients and webhooks on the others, as a control plane on nodes of its
  own. ``--pod ray-worker`` creates a Ray worker pod as KubeRay makes one instead of the
  one-container trainer pod.
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
import dataclasses
import json
import os
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

from bench import common
from localcluster.control_plane import Kube, start_control_plane
from localcluster.processes import free_port
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    Operator,
    delete_webhooks,
    pod_admission_review,
    start_operator,
)
from tests.support.pods import opted_in_pod, syncconfig
from tests.support.sidecar_process import wait_for
from tests.support.webhook import WebhookTLS, mutating_webhook_configuration
from trialsync_operator import names
from trialsync_operator.admission import injection, patch
from trialsync_operator.settings import DEFAULT_IMAGE, DEFAULT_SCHEMES, Defaults
from trialsync_operator.syncconfig import SidecarImage, view_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", type=int, default=5000, help="webhook: requests timed (5000)")
    parser.add_argument("--pods", type=int, default=400, help="webhook: pods created per run (400)")
    parser.add_argument("--clients", type=int, default=8, help="webhook: concurrent clients (8)")
    parser.add_argument(
        "--syncconfigs", type=int, default=1000, help="webhook: SyncConfigs for the RSS (1000)"
    )
    parser.add_argument(
        "--pod",
        choices=sorted(POD_SHAPES),
        default="trainer",
        help="webhook: the pods created: a one-container trainer, or a Ray worker as KubeRay "
        "makes one (trainer)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="webhook: etcd and the apiserver on CPU 0, the clients and webhooks on the "
        "other CPUs (default: all share every CPU)",
    )


def _pod(name: str, labelled: bool, shape: str = "trainer") -> dict[str, Any]:
    pod = opted_in_pod(name, "exp", labelled=labelled)
    POD_SHAPES[shape](pod)
    return pod


def _ray_worker(pod: dict[str, Any]) -> None:
    """Make ``pod`` a Ray worker as KubeRay (v1.3) makes one: its labels, the wait-for-GCS
    init container, the worker's env, probes, preStop hook, resources and /dev/shm."""
    pod["metadata"]["labels"].update(
        {
            "app.kubernetes.io/created-by": "kuberay-operator",
            "app.kubernetes.io/name": "kuberay",
            "ray.io/cluster": "tune",
            "ray.io/group": "gpu-workers",
            "ray.io/identifier": "tune-worker",
            "ray.io/is-ray-node": "yes",
            "ray.io/node-type": "worker",
        }
    )
    pod["metadata"]["annotations"]["ray.io/ft-enabled"] = "false"
    head = "tune-head-svc.ml.svc.cluster.local"
    address = [{"name": "FQ_RAY_IP", "value": head}, {"name": "RAY_IP", "value": "tune-head-svc"}]
    env = address + [
        {"name": k, "value": v}
        for k, v in {
            "RAY_CLUSTER_NAME": "tune",
            "RAY_CLOUD_INSTANCE_ID": pod["metadata"]["name"],
            "RAY_NODE_TYPE_NAME": "gpu-workers",
            "KUBERAY_GEN_RAY_START_CMD": f"ray start --address={head}:6379 --block "
            "--metrics-export-port=8080 --dashboard-agent-listen-port=52365 --num-cpus=4 "
            "--memory=17179869184 --num-gpus=1",
            "RAY_PORT": "6379",
            "RAY_ADDRESS": f"{head}:6379",
            "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
            "REDIS_PASSWORD": "",
            "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
        }.items()
    ]
    health = "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
    probe = {
        "exec": {"command": ["bash", "-c", health]},
        "initialDelaySeconds": 30,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 10,
    }
    resources = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    image = "rayproject/ray:2.40.0-gpu"
    wait = f"until ray health-check --address {head}:6379 >/dev/null 2>&1; do sleep 5; done"
    pod["spec"].update(
        {
            "initContainers": [
                {
                    "name": "wait-gcs-ready",
                    "image": image,
                    "command": ["/bin/bash", "-lc", "--"],
                    "args": [wait],
                    "env": address,
                    "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}},
                }
            ],
            "containers": [
                {
                    "name": "ray-worker",
                    "image": image,
                    "command": ["/bin/bash", "-lc", "--"],
                    "args": ["ulimit -n 65536; $KUBERAY_GEN_RAY_START_CMD"],
                    "env": env,
                    "ports": [{"containerPort": 8080, "name": "metrics", "protocol": "TCP"}],
                    "resources": {"limits": resources, "requests": resources},
                    "livenessProbe": probe,
                    "readinessProbe": {**probe, "failureThreshold": 1},
                    "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
                    "volumeMounts": [{"name": "shared-mem", "mountPath": "/dev/shm"}],
                }
            ],
            "volumes": [
                {"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
            ],
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    )


#: How ``--pod`` shapes the benchmark's pods, from ``opted_in_pod``'s one-container trainer.
POD_SHAPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "trainer": lambda pod: None,
    "ray-worker": _ray_worker,
}


JSON = {"Content-Type": "application/json"}


def _syncconfig(name: str) -> str:
    return json.dumps(syncconfig(name, {"uploadDir": f"s3://bucket/{name}"}))


async def _latency(
    operator: Operator, ca: str, namespace: str, count: int, shape: str
) -> list[float]:
    review = pod_admission_review(_pod("", True, shape), namespace)
    body = json.dumps(review).encode()
    context = ssl.create_default_context(cadata=ca)
    url = f"https://127.0.0.1:{operator.webhook_port}/mutate-pods"
    timings = []
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(count + 100):
            started = time.perf_counter()
            async with session.post(url, data=body, headers=JSON) as response:
                answer = await response.json()
            elapsed = time.perf_counter() - started
            if not answer["response"].get("patch"):
                raise RuntimeError(f"the webhook did not inject: {answer}")
            if i >= 100:  # warm-up: connection, first handler calls
                timings.append(elapsed)
    return timings


@dataclasses.dataclass
class Load:
    """Who creates the pods and whose CPU is counted: the control plane's processes, the
    webhook's, and this process (the clients)."""

    kube: Kube
    namespace: str
    args: argparse.Namespace
    webhook_pid: int | None = None
    #: The CPUs this process may run on when it starts, in order (with ``--pin`` the first
    #: is the control plane's, the others everyone else's).
    cpus: list[int] = dataclasses.field(default_factory=lambda: sorted(os.sched_getaffinity(0)))

    def pids(self) -> dict[str, int]:
        pids = {**self.kube.pids, "clients": os.getpid()}
        if self.webhook_pid is not None:
            pids["webhook"] = self.webhook_pid
        return pids

    def rate(
        self, labelled: bool = False, make: Callable[[str], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Pods/s created through the apiserver by ``--clients`` threads (each pod
        ``make(name)``, by default the benchmark's pod, opted in or not), and the CPU
        milliseconds each process spent per pod."""
        api = self.kube.api_client()
        core = client.CoreV1Api(api)
        prefix = uuid.uuid4().hex[:6]
        build = make or (lambda name: _pod(name, labelled, self.args.pod))
        count, clients = self.args.pods, self.args.clients

        def create(i: int) -> None:
            # The answer is read but not turned into model objects: that is the client's
            # CPU, which grows with the pod, not the apiserver's.
            response = core.create_namespaced_pod(
                self.namespace, build(f"{prefix}-{i}"), _preload_content=False
            )
            response.read()
            response.release_conn()

        pids = self.pids()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(create, range(min(clients * 4, count))))  # warm-up, not timed
            before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            list(pool.map(create, range(clients * 4, clients * 4 + count)))
            elapsed = time.perf_counter() - started
            after = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        # Each run starts from an empty namespace: a store and watch cache that grow over
        # the runs would make the later ones slower.
        core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)
        api.close()
        return {
            "pods_per_s": count / elapsed,
            "cpu_ms_per_pod": {n: (after[n] - before[n]) * 1000 / count for n in pids},
        }

    def pin(self, pid: int) -> None:
        """With ``--pin``: ``pid`` (a client or a webhook) off the control plane's CPU."""
        if self.args.pin:
            _set_cpus(pid, self.cpus[1:])


def _pin_control_plane(load: Load) -> None:
    if len(load.cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    for pid in load.kube.pids.values():
        _set_cpus(pid, load.cpus[:1])
    load.pin(os.getpid())


def _set_cpus(pid: int, cpus: list[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads made later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one kind: each rate, the median, and the mean CPU per pod of each process."""
    names_ = runs[0]["cpu_ms_per_pod"]
    return {
        "runs": [r["pods_per_s"] for r in runs],
        "pods_per_s": statistics.median(r["pods_per_s"] for r in runs),
        "cpu_ms_per_pod": {
            n: statistics.mean(r["cpu_ms_per_pod"][n] for r in runs) for n in names_
        },
    }


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


def _static_webhook_rate(load: Load, tmp: Path, answer: dict[str, str]) -> dict[str, Any]:
    """Pod creation through a webhook process that gives every pod the same ``answer``."""
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
        load.pin(server.pid)
        load.webhook_pid = server.pid
        config = mutating_webhook_configuration(
            name,
            url=f"https://127.0.0.1:{port}/mutate",
            ca_bundle=tls.ca_bundle,
            object_selector={"matchLabels": {names.INJECT_LABEL: "true"}},
        )
        load.kube.kubectl("apply", "-f", "-", input=json.dumps(config))
        return _median([load.rate(labelled=True) for _ in range(2)])
    finally:
        load.webhook_pid = None
        load.kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        server.terminate()
        server.wait()


def _trialsync_patch(load: Load) -> list[dict[str, Any]]:
    """The JSONPatch trialsync gives the benchmark's pods (the ServiceAccount plugin adds
    its volume only after the mutating webhooks, so they see the pod as created)."""
    namespace = load.namespace
    stored = load.kube.kubectl("get", "syncconfig", "exp", "-n", namespace, "-o", "json").stdout
    view = view_of(json.loads(stored), SidecarImage(DEFAULT_IMAGE, frozenset(DEFAULT_SCHEMES)))
    pod = _pod("sample", True, load.args.pod)
    result = injection.plan(pod, namespace, lambda ns, name: view, Defaults(image=DEFAULT_IMAGE))
    assert result.patch is not None
    return patch.json_patch(pod, result.patch)


def _pre_injected(ops: list[dict[str, Any]], shape: str) -> Callable[[str], dict[str, Any]]:
    """Pods that already carry the sidecar and do not opt in: the same stored object, no
    webhook call."""

    def make(name: str) -> dict[str, Any]:
        pod = jsonpatch.apply_patch(_pod(name, True, shape), ops)
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
    load = Load(kube, kube.create_namespace("bench"), args)
    namespace = load.namespace
    if args.pin:
        _pin_control_plane(load)
    kube.kubectl(
        "apply", "-f", str(Path(__file__).resolve().parents[1] / "crds" / "syncconfig.yaml")
    )
    configs = "\n---\n".join(_syncconfig(f"c{i:04d}") for i in range(args.syncconfigs - 1))
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=configs, timeout=600)
    operator = start_operator(kube, tmp / "operator", extra_args=["--log-level", "warning"])
    try:
        load.pin(operator.proc.pid)
        load.webhook_pid = operator.proc.pid
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
        timings = asyncio.run(_latency(operator, ca, namespace, args.reviews, args.pod))
        without, hooked = [], []
        for _ in range(2):  # interleaved, so drift over the run affects both alike
            without.append(load.rate(labelled=False))
            hooked.append(load.rate(labelled=True))
        rss_after = _rss_mib(operator.proc.pid)
    finally:
        load.webhook_pid = None
        operator.stop()
        delete_webhooks(kube)
    allow_only = _static_webhook_rate(load, tmp, {})
    ops = _trialsync_patch(load)
    answer = {
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    same_patch = _static_webhook_rate(load, tmp, answer)
    pre_injected = _median([load.rate(make=_pre_injected(ops, args.pod)) for _ in range(2)])
    ms = sorted(t * 1000 for t in timings)
    base, with_webhook = _median(without), _median(hooked)
    return {
        "pod": args.pod,
        "pinned": args.pin,
        "latency_ms": {
            "p50": ms[len(ms) // 2],
            "p90": ms[int(len(ms) * 0.9)],
            "p99": ms[int(len(ms) * 0.99)],
            "max": ms[-1],
            "count": len(ms),
        },
        "pods": {
            "without_webhook": base,
            "with_webhook": with_webhook,
            "ratio": with_webhook["pods_per_s"] / base["pods_per_s"],
            "pre_injected_without_webhook": pre_injected,
            "ratio_to_pre_injected": with_webhook["pods_per_s"] / pre_injected["pods_per_s"],
            "allow_only_webhook": allow_only,
            "same_patch_webhook": same_patch,
            "ratio_to_same_patch_webhook": (with_webhook["pods_per_s"] / same_patch["pods_per_s"]),
        },
        "rss_mib": {"syncconfigs": args.syncconfigs, "indexed": rss, "after_load": rss_after},
    }


ROWS = (
    ("without_webhook", "without the webhook (not opted in)"),
    ("with_webhook", "with it (each pod injected)"),
    ("pre_injected_without_webhook", "already carrying the sidecar, no webhook"),
    ("allow_only_webhook", "an allow-only webhook (no patch)"),
    ("same_patch_webhook", "a webhook giving trialsync's patch, precomputed"),
)


def report(result: dict[str, Any]) -> str:
    lat, pods, rss = result["latency_ms"], result["pods"], result["rss_mib"]
    where = (
        "etcd and the apiserver on CPU 0, the rest on the others"
        if result["pinned"]
        else ("every process on every CPU")
    )
    lines = [
        f"webhook latency over {lat['count']} reviews: p50 {lat['p50']:.2f} ms, "
        f"p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms "
        "(target p99 <= 5 ms)",
        f"pods/s through the apiserver ({result['pod']} pods; {where}), with the CPU ms "
        "each process spent per pod:",
    ]
    for key, label in ROWS:
        row = pods[key]
        cpu = ", ".join(f"{n} {v:.2f}" for n, v in sorted(row["cpu_ms_per_pod"].items()))
        runs = " / ".join(f"{v:.0f}" for v in row["runs"])
        lines.append(f"  {label}: {row['pods_per_s']:.1f} ({runs}); {cpu}")
    lines += [
        f"ratio with/without the webhook {pods['ratio']:.1%} (target >= 90%); with the webhook "
        f"/ the same pods pre-injected {pods['ratio_to_pre_injected']:.1%}; trialsync / the "
        f"precomputed patch {pods['ratio_to_same_patch_webhook']:.1%}",
        f"operator RSS with {rss['syncconfigs']} SyncConfigs: {rss['indexed']:.1f} MiB "
        f"indexed, {rss['after_load']:.1f} MiB after the load (target <= 150 MiB)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parsed = parser.parse_args()
    outcome = run(parsed)
    print(report(outcome))
    print(common.write_results("webhook", {"machine": common.machine(), "webhook": outcome}))
