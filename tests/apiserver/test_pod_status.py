"""The SyncConfig status counts its pods: the real operator polls 50 pods' sidecar status
endpoints (simulated on loopback addresses, the pods' IPs) and writes the counts, the
newest checkpoint and the oldest unsynced change, within one syncPeriod of a change, and
writes nothing while nothing changes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.control_plane import Kube
from localcluster.processes import tail
from tests.support.operator_process import Operator, delete_webhooks, start_operator
from tests.support.pods import syncconfig
from tests.support.requirements import external_cluster_only
from tests.support.sidecar_process import wait_for
from tests.support.status_endpoints import StatusEndpoints, document, make_pods
from trialsync_operator.reconcile.pod_status import MIN_INTERVAL

# timing: its bounds are a syncPeriod, so make test keeps it away from a cluster's start.
pytestmark = [pytest.mark.k8s, pytest.mark.timing]

PODS = 50
NO_IP = 5  # pods not yet scheduled: no IP, so unknown
PERIOD = int(MIN_INTERVAL)
#: The status follows a change within one syncPeriod, plus this much: one poll of every
#: pod (short here) and the status patch.
SLACK = 3.0


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatusEndpoints]:
    served = StatusEndpoints(PODS, str(tmp_path_factory.mktemp("endpoints") / "e.log"))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def polling_operator(
    kube: Kube, endpoints: StatusEndpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    if not kube.local:
        external_cluster_only("the pods' IPs are served on this host's loopback")
    running = start_operator(
        kube,
        tmp_path_factory.mktemp("operator"),
        extra_args=["--pod-status-port", str(endpoints.port)],
    )
    try:
        yield running
    finally:
        delete_webhooks(kube)
        running.stop()


def _get(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    out = kube.kubectl("get", "syncconfig", name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return dict(condition)
    return {}


def _counts_become(
    kube: Kube,
    operator: Operator,
    namespace: str,
    name: str,
    expected: dict[str, int],
    timeout: float,
) -> tuple[dict[str, Any], float]:
    """The SyncConfig once its pod counts are ``expected`` (others 0), and how long it took."""
    want = {"synced": 0, "lagging": 0, "failing": 0, "starting": 0, "unknown": 0, **expected}
    started = time.monotonic()
    seen: list[Any] = []

    def counted() -> dict[str, Any] | None:
        body = _get(kube, namespace, name)
        seen[:] = [body.get("status", {}).get("pods")]
        return body if seen[0] == want else None

    try:
        body = wait_for(counted, timeout, 0.2, what=f"pods {want}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; the status last said {seen}; the operator's log ends:\n"
            + tail(operator.log_path, 40)
        ) from None
    return body, time.monotonic() - started


def test_the_status_counts_its_pods_within_one_sync_period(
    kube: Kube, polling_operator: Operator, endpoints: StatusEndpoints, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(namespace)
    spec = {"uploadDir": "s3://bucket/exp", "syncPeriod": PERIOD}
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(syncconfig("exp", spec)))
    wait_for(
        lambda: _condition(_get(kube, namespace, "exp"), "Ready").get("status") == "True",
        30,
        what="Ready",
    )
    published = time.time() - 60
    ips = endpoints.ips[: PODS - NO_IP]
    endpoints.set(ips, document("synced", newest=("exp/t0/checkpoint_000001", published)))
    make_pods(kube, namespace, "exp", [*ips, *[None] * NO_IP])
    try:
        body, _ = _counts_become(
            kube,
            polling_operator,
            namespace,
            "exp",
            {"total": PODS, "synced": PODS - NO_IP, "unknown": NO_IP},
            90,
        )
        status = body["status"]
        assert status["newestCheckpoint"]["path"] == "exp/t0/checkpoint_000001"
        assert status["newestCheckpoint"]["url"] == "s3://bucket/exp/exp/t0/checkpoint_000001"
        assert status.get("oldestUnsynced") is None
        synced = _condition(body, "Synced")
        assert (synced["status"], synced["reason"]) == ("True", "Synced")
        assert f"{NO_IP} not reachable" in synced["message"]
        assert _condition(body, "Ready")["status"] == "True"  # the reconciler's, kept

        # kubectl shows the counts.
        table = kube.kubectl("get", "syncconfig", "exp", "-n", namespace).stdout
        header, row = table.splitlines()[:2]
        assert header.split()[6:11] == ["PODS", "SYNCED", "LAGGING", "FAILING", "NEWEST"]
        assert row.split()[5:9] == [str(PODS), str(PODS - NO_IP), "0", "0"]

        # Nothing changes: nothing is written, though every pod is polled each period.
        version = body["metadata"]["resourceVersion"]
        before = endpoints.hits()
        time.sleep(2 * PERIOD + 1)
        quiet = _get(kube, namespace, "exp")
        assert quiet["metadata"]["resourceVersion"] == version, (
            f"a write while nothing changed: the status was {body['status']}, is "
            f"{quiet['status']}; the operator's log ends:\n{tail(polling_operator.log_path, 40)}"
        )
        after = endpoints.hits()
        polls = [after.get(ip, 0) - before.get(ip, 0) for ip in ips]
        assert min(polls) >= 2, (polls, tail(polling_operator.log_path, 40))
        assert max(polls) <= 3, (polls, tail(polling_operator.log_path, 40))

        # Ten pods fall behind, five fail: the status says so within one syncPeriod.
        behind = time.time() - 3 * PERIOD
        lagging, failing = ips[:10], ips[10:15]
        newer = time.time()
        endpoints.set(
            lagging,
            document(
                "lagging",
                newest=("exp/t0/checkpoint_000001", published),
                oldest=("exp/t1/checkpoint_000004", behind),
            ),
        )
        endpoints.set(failing, document("failing", reason="credentials"))
        endpoints.set(ips[15:16], document("synced", newest=("exp/t9/checkpoint_000007", newer)))
        body, took = _counts_become(
            kube,
            polling_operator,
            namespace,
            "exp",
            {
                "total": PODS,
                "synced": PODS - NO_IP - 15,
                "lagging": 10,
                "failing": 5,
                "unknown": NO_IP,
            },
            PERIOD + SLACK + 10,
        )
        assert took <= PERIOD + SLACK, f"the status took {took:.1f} s to follow"
        status = body["status"]
        assert status["newestCheckpoint"]["path"] == "exp/t9/checkpoint_000007"
        assert status["newestCheckpoint"]["pod"] == "p-15"
        assert status["oldestUnsynced"]["path"] == "exp/t1/checkpoint_000004"
        assert status["oldestUnsynced"]["pod"] in {f"p-{i}" for i in range(10)}
        condition = _condition(body, "Synced")
        assert (condition["status"], condition["reason"]) == ("False", "Failing")
        assert "5 of 50 pod(s) fail to sync (credentials)" in condition["message"]
        assert "10 lagging" in condition["message"]

        # They recover; a pod goes.
        endpoints.set([*lagging, *failing], document("synced"))
        kube.kubectl("delete", "pod", "p-0", "-n", namespace, "--wait=false")
        body, took = _counts_become(
            kube,
            polling_operator,
            namespace,
            "exp",
            {"total": PODS - 1, "synced": PODS - NO_IP - 1, "unknown": NO_IP},
            PERIOD + SLACK + 10,
        )
        assert took <= PERIOD + SLACK, f"the status took {took:.1f} s to follow"
        assert body["status"].get("oldestUnsynced") is None
        condition = _condition(body, "Synced")
        assert (condition["status"], condition["reason"]) == ("True", "Synced")
    finally:
        endpoints.set(endpoints.ips, None)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
