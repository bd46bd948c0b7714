"""The SyncConfig status counting its pods, at scale: the operator's memory and CPU, and how
soon the status follows the sidecars.

Against the test control plane (etcd + kube-apiserver on loopback) and the real
``trialsync-operator`` process: ``--status-pods`` pods (1,000) that name one SyncConfig are
created through the webhook and given IPs of their own (``127.1.x.y``) through the status
subresource; one process answers ``GET /status`` on each of those addresses as the pod's
sidecar would (``tests/support/status_endpoints.py``; only the sidecars' endpoints are
simulated). Then:

* **first count**: seconds from the last pod's IP to a status that counts every pod synced;
* **freshness**: ``--status-rounds`` times, a tenth of the sidecars change state (lagging,
  then failing, then synced again); seconds until the SyncConfig's status says so. The
  target is one ``syncPeriod`` (``--status-period``);
* **quiet**: over three periods with no change, the status writes (target 0) and the
  operator's CPU per period, every pod being polled once per period;
* **RSS**: the operator's resident memory before the pods exist and after the rounds
  (target under 200 MiB).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client

from bench import common
from localcluster.control_plane import Kube, start_control_plane
from tests.support.operator_process import delete_webhooks, start_operator
from tests.support.pods import syncconfig
from tests.support.sidecar_process import wait_for
from tests.support.status_endpoints import StatusEndpoints, document, make_pods
from trialsync_operator import names

STATES = {"synced": 0, "lagging": 0, "failing": 0, "starting": 0, "unknown": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status-pods", type=int, default=1000, help="pod-status: pods polled (1000)"
    )
    parser.add_argument(
        "--status-period",
        type=int,
        default=10,
        help="pod-status: the SyncConfig's syncPeriod, seconds (10)",
    )
    parser.add_argument(
        "--status-rounds", type=int, default=3, help="pod-status: state changes timed (3)"
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("pod-status") as tmp:
        kube = start_control_plane(tmp / "kube")
        try:
            return _run(kube, tmp, args)
        finally:
            kube.stop()


def _run(kube: Kube, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    count, period = args.status_pods, args.status_period
    namespace = kube.create_namespace("bench")
    endpoints = StatusEndpoints(count, str(tmp / "endpoints.log"))
    operator = start_operator(
        kube,
        tmp / "operator",
        extra_args=["--log-level", "warning", "--pod-status-port", str(endpoints.port)],
    )
    api = kube.api_client()
    custom = client.CustomObjectsApi(api)

    def status() -> dict[str, Any]:
        body: dict[str, Any] = custom.get_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, "exp"
        )
        return body

    def counts_become(expected: dict[str, int], timeout: float) -> tuple[dict[str, Any], float]:
        want = {"total": count, **STATES, **expected}
        started = time.monotonic()
        body = wait_for(
            lambda: (b := status()).get("status", {}).get("pods") == want and b,
            timeout,
            0.1,
            what=f"pods {want}",
        )
        return body, time.monotonic() - started

    try:
        spec = {"uploadDir": "s3://bucket/exp", "syncPeriod": period}
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(syncconfig("exp", spec)))
        wait_for(lambda: status().get("status"), 60, what="the SyncConfig's status")
        time.sleep(2)
        rss_before = _rss_mib(operator.proc.pid)
        published = time.time()
        endpoints.set(endpoints.ips, document("synced", newest=("exp/t/checkpoint_1", published)))
        started = time.monotonic()
        make_pods(kube, namespace, "exp", endpoints.ips, clients=8)
        created = time.monotonic() - started
        _, first = counts_become({"synced": count}, 10 * period + 120)

        rng = random.Random(0)
        rounds = []
        tenth = max(1, count // 10)
        for i in range(args.status_rounds):
            changed = rng.sample(endpoints.ips, tenth)
            state = ("lagging", "failing")[i % 2]
            now = time.time()
            endpoints.set(
                changed,
                document(
                    state,
                    newest=("exp/t/checkpoint_1", published),
                    oldest=(f"exp/t/checkpoint_{i + 2}", now - 2 * period),
                    reason="credentials" if state == "failing" else None,
                ),
            )
            _, took = counts_become({"synced": count - tenth, state: tenth}, 3 * period + 60)
            endpoints.set(changed, document("synced", newest=("exp/t/checkpoint_1", published)))
            _, back = counts_become({"synced": count}, 3 * period + 60)
            rounds.append({"state": state, "changed": tenth, "seconds": took, "back_s": back})

        versions = {status()["metadata"]["resourceVersion"]}
        hits_before = endpoints.hits()
        cpu_before = _cpu_seconds(operator.proc.pid)
        quiet_until = time.monotonic() + 3 * period
        while time.monotonic() < quiet_until:  # every write of the status seen
            time.sleep(0.5)
            versions.add(status()["metadata"]["resourceVersion"])
        cpu_quiet = _cpu_seconds(operator.proc.pid) - cpu_before
        hits_after = endpoints.hits()
        writes_quiet = len(versions) - 1
        polls = sum(hits_after.values()) - sum(hits_before.values())
        rss_after = _rss_mib(operator.proc.pid)
    finally:
        api.close()
        operator.stop()
        delete_webhooks(kube)
        endpoints.stop()
    freshness = [r["seconds"] for r in rounds] + [r["back_s"] for r in rounds]
    return {
        "pods": count,
        "period_s": period,
        "pods_created_s": created,
        "first_count_s": first,
        "rounds": rounds,
        "freshness_max_s": max(freshness),
        "quiet": {
            "seconds": 3 * period,
            "status_writes": writes_quiet,
            "polls": polls,
            "operator_cpu_s_per_period": cpu_quiet / 3,
        },
        "rss_mib": {"before_pods": rss_before, "after": rss_after},
    }


def report(result: dict[str, Any]) -> str:
    quiet, rss = result["quiet"], result["rss_mib"]
    rounds = ", ".join(
        f"{r['changed']} {r['state']} {r['seconds']:.1f} s / back {r['back_s']:.1f} s"
        for r in result["rounds"]
    )
    return "\n".join(
        [
            f"pod status with {result['pods']} pods, syncPeriod {result['period_s']} s "
            f"(pods created and given IPs in {result['pods_created_s']:.1f} s)",
            f"  first count of every pod: {result['first_count_s']:.1f} s after the last IP",
            f"  freshness: {rounds}; worst {result['freshness_max_s']:.1f} s "
            f"(target <= one syncPeriod, {result['period_s']} s)",
            f"  quiet {quiet['seconds']} s: {quiet['polls']} polls, {quiet['status_writes']} "
            f"status writes (target 0), operator CPU {quiet['operator_cpu_s_per_period']:.2f} s "
            "per period",
            f"  operator RSS: {rss['before_pods']:.1f} MiB before the pods, "
            f"{rss['after']:.1f} MiB after (target < 200 MiB)",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parsed = parser.parse_args()
    outcome = run(parsed)
    print(report(outcome))
    print(common.write_results("pod-status", {"machine": common.machine(), "pod-status": outcome}))
