"""Operators started and stopped by the tests: replicas, leadership, certificate rotation,
an index read before the first answer, and what happens when the operator is away."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.control_plane import Kube
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    Operator,
    delete_webhooks,
    pod_admission_review,
    point_webhooks_at,
    start_operator,
)
from tests.support.pods import opted_in_pod, sidecars, syncconfig
from tests.support.requirements import external_cluster_only
from tests.support.sidecar_process import wait_for
from trialsync_operator import names

pytestmark = pytest.mark.k8s
TLS_SECRET = "trialsync-webhook-tls"


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    name = f"r-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operators(kube: Kube, tmp_path: Path) -> Iterator[list[Operator]]:
    """Operators a test starts; stopped, and the webhooks removed, when it ends."""
    started: list[Operator] = []
    yield started
    delete_webhooks(kube)
    for operator in started:
        operator.stop()
    kube.kubectl(
        "delete", "lease", "trialsync-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found"
    )


def _syncconfig(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(syncconfig(name, spec))


def _pod(name: str, config: str) -> str:
    return json.dumps(opted_in_pod(name, config))


def _ca(kube: Kube) -> str:
    secret = json.loads(
        kube.kubectl("get", "secret", TLS_SECRET, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    )
    return base64.b64decode(secret["data"]["ca.crt"]).decode()


def _review(operator: Operator, ca: str, namespace: str, config: str) -> dict[str, Any]:
    """Call one replica's mutating webhook directly, as the apiserver would."""
    review = pod_admission_review(json.loads(_pod("direct", config)), namespace)
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.webhook_port}/mutate-pods",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())["response"]
    return answer


def _served_certificate(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return hashlib.sha256(der or b"").hexdigest()


def _holder(kube: Kube) -> str:
    lease = kube.kubectl(
        "get", "lease", "trialsync-operator", "-n", OPERATOR_NAMESPACE, "-o", "json", check=False
    )
    if lease.returncode != 0:
        return ""
    return str(json.loads(lease.stdout)["spec"].get("holderIdentity") or "")


def test_every_replica_serves_the_webhook_and_one_leader_reconciles(
    kube: Kube, ns: str, tmp_path: Path, operators: list[Operator]
) -> None:
    operators.append(start_operator(kube, tmp_path / "a", identity="replica-a"))
    operators.append(
        start_operator(kube, tmp_path / "b", identity="replica-b", install_webhooks=False)
    )
    leader = wait_for(lambda: _holder(kube), 30, what="a Lease holder")
    assert leader in ("replica-a", "replica-b")

    kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_syncconfig("exp", {"uploadDir": "s3://bucket/x"})
    )
    ca = _ca(kube)
    for operator in operators:
        answer = wait_for(
            lambda op=operator: (r := _review(op, ca, ns, "exp")).get("patch") and r,
            20,
            what="an injecting answer",
        )
        assert answer["allowed"] is True
        assert names.SIDECAR_NAME in base64.b64decode(answer["patch"]).decode()

    def valid_events() -> int:
        items = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        return sum(
            1 for e in items if e["involvedObject"]["name"] == "exp" and e["reason"] == "Valid"
        )

    wait_for(valid_events, 30, what="the Valid Event")
    # Both replicas saw the SyncConfig; only the leader wrote its status and Event.
    threading.Event().wait(3)
    assert valid_events() == 1

    # The leader goes: the other takes the Lease and reconciles what comes next.
    [gone] = [op for op in operators if op.args[op.args.index("--identity") + 1] == leader]
    gone.stop()
    [survivor] = [op for op in operators if op is not gone]
    point_webhooks_at(kube, survivor.webhook_port)
    successor = wait_for(
        lambda: (h := _holder(kube)) and h != leader and h, 30, what="a new leader"
    )
    assert successor in ("replica-a", "replica-b")
    kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_syncconfig("later", {"uploadDir": "s3://bucket/y"})
    )
    wait_for(
        lambda: json.loads(
            kube.kubectl("get", "syncconfig", "later", "-n", ns, "-o", "json").stdout
        ).get("status"),
        30,
        what="the new leader's status",
    )


def test_a_certificate_rotation_fails_no_pod_creation(
    kube: Kube, ns: str, tmp_path: Path, operators: list[Operator]
) -> None:
    operators.append(
        start_operator(kube, tmp_path / "op", extra_args=["--cert-check-interval", "0.5"])
    )
    operator = operators[0]
    kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_syncconfig("exp", {"uploadDir": "s3://bucket/x"})
    )
    # The webhook knows "exp" (from its watch) before pods name it: a pod naming a SyncConfig
    # the webhook has not seen yet is refused, which is not what this test is about.
    ca = _ca(kube)
    wait_for(lambda: _review(operator, ca, ns, "exp").get("patch"), 20, what="exp known")
    before = _served_certificate(operator.webhook_port)
    failures: list[str] = []
    created: list[str] = []
    stop = threading.Event()

    def create_pods() -> None:
        i = 0
        while not stop.is_set():
            name = f"p{i}"
            result = kube.kubectl(
                "apply", "-n", ns, "-f", "-", input=_pod(name, "exp"), check=False
            )
            (created if result.returncode == 0 else failures).append(name + " " + result.stderr)
            i += 1

    creator = threading.Thread(target=create_pods)
    creator.start()
    try:
        wait_for(lambda: len(created) >= 3, 30, what="pods before the rotation")
        kube.kubectl(
            "annotate", "secret", TLS_SECRET, "-n", OPERATOR_NAMESPACE, "trialsync.io/rotate=now"
        )
        wait_for(
            lambda: _served_certificate(operator.webhook_port) != before,
            30,
            what="a new certificate",
        )
        count = len(created)
        wait_for(lambda: len(created) >= count + 3, 30, what="pods after the rotation")
    finally:
        stop.set()
        creator.join()
    assert not failures, failures
    annotations = json.loads(
        kube.kubectl("get", "secret", TLS_SECRET, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    )["metadata"]["annotations"]
    assert "trialsync.io/rotate" not in annotations
    pod = json.loads(
        kube.kubectl("get", "pod", created[-1].split()[0], "-n", ns, "-o", "json").stdout
    )
    assert len(sidecars(pod)) == 1


def test_the_webhook_answers_only_once_the_index_holds_every_syncconfig(
    kube: Kube, ns: str, tmp_path: Path, operators: list[Operator]
) -> None:
    configs = "\n---\n".join(
        _syncconfig(f"c{i:03d}", {"uploadDir": f"s3://bucket/c{i}"}) for i in range(80)
    )
    kube.kubectl("apply", "-n", ns, "-f", "-", input=configs)
    operators.append(start_operator(kube, tmp_path / "op"))
    # Ready means indexed: the very first pod, naming the last SyncConfig, is injected.
    result = kube.kubectl("apply", "-n", ns, "-f", "-", input=_pod("first", "c079"), check=False)
    assert result.returncode == 0, result.stderr
    assert (
        len(
            sidecars(json.loads(kube.kubectl("get", "pod", "first", "-n", ns, "-o", "json").stdout))
        )
        == 1
    )


def test_admit_mode_lets_a_pod_with_a_missing_syncconfig_run_unmodified_with_a_warning(
    kube: Kube, ns: str, tmp_path: Path, operators: list[Operator]
) -> None:
    operators.append(
        start_operator(kube, tmp_path / "op", extra_args=["--on-config-error", "admit"])
    )
    result = kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_pod("lenient", "nosuch"), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Warning: trialsync: no sidecar injected: SyncConfig" in result.stderr
    pod = json.loads(kube.kubectl("get", "pod", "lenient", "-n", ns, "-o", "json").stdout)
    assert not sidecars(pod)

    def event() -> list[dict[str, Any]]:
        items = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        return [e for e in items if e["reason"] == "SidecarNotInjected"]

    [warning] = wait_for(event, 15, what="the SidecarNotInjected Event")
    assert warning["involvedObject"]["name"] == "lenient"
    assert "does not exist" in warning["message"]


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_with_the_operator_down_the_failure_policy_decides_and_unlabelled_pods_never_care(
    kube: Kube, ns: str, tmp_path: Path, operators: list[Operator], policy: str
) -> None:
    operators.append(start_operator(kube, tmp_path / "op", failure_policy=policy))
    kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_syncconfig("exp", {"uploadDir": "s3://bucket/x"})
    )
    operators[0].stop()
    labelled = kube.kubectl(
        "apply", "-n", ns, "-f", "-", input=_pod("labelled", "exp"), check=False
    )
    plain = json.loads(_pod("plain", "exp"))
    plain["metadata"]["labels"] = {}
    unlabelled = kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(plain), check=False)
    assert unlabelled.returncode == 0, unlabelled.stderr
    if policy == "Fail":
        assert labelled.returncode != 0
        assert 'failed calling webhook "pods.trialsync.io"' in labelled.stderr
    else:
        assert labelled.returncode == 0, labelled.stderr
        pod = json.loads(kube.kubectl("get", "pod", "labelled", "-n", ns, "-o", "json").stdout)
        assert not sidecars(pod)
