"""The operator's /metrics and its search for missed injections, against the real
apiserver: pods admitted without a sidecar while the operator was down (failurePolicy
Ignore) are reported within 30 s of its start, by an Event on each, a condition on the
SyncConfig and a gauge; each kind of admission adds exactly its counters."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localcluster.control_plane import Kube
from localcluster.processes import free_ports
from tests.support.operator_process import (
    Operator,
    delete_webhooks,
    pod_admission_review,
    start_operator,
)
from tests.support.pods import opted_in_pod, sidecars, syncconfig
from tests.support.requirements import external_cluster_only
from tests.support.sidecar_process import wait_for
from trialsync_operator import names

pytestmark = pytest.mark.k8s

WEBHOOKS = "trialsync-metrics-test"
#: Its own namespace, so its Lease and certificate are its own.
OPERATOR_NS = "trialsync-metrics"
#: The scan's promise: reported within this many seconds of the operator's start.
REPORT_WITHIN = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Ignoring:
    """An operator whose webhooks fail open (failurePolicy Ignore), stopped and started
    again on the same ports."""

    kube: Kube
    workdir: Path
    ports: tuple[int, int]
    running: Operator | None = None

    def start(self) -> Operator:
        self.running = start_operator(
            self.kube,
            self.workdir,
            webhook_name=WEBHOOKS,
            failure_policy="Ignore",
            namespace=OPERATOR_NS,
            ports=self.ports,
        )
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None

    def operator(self) -> Operator:
        return self.running or self.start()


@pytest.fixture(scope="module")
def ignoring(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ignoring]:
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    health, webhook = free_ports(2)
    handle = Ignoring(kube, tmp_path_factory.mktemp("operator-metrics"), (health, webhook))
    try:
        yield handle
    finally:
        delete_webhooks(kube, WEBHOOKS)
        handle.stop()


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(kube: Kube, namespace: str, body: dict[str, Any]) -> Any:
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def _get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        kube.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return result


def _condition(kube: Kube, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    status = _get(kube, namespace, "syncconfig", name).get("status") or {}
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == type_), None)


def _missed_events(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    out = kube.kubectl(
        "get", "events", "-n", namespace, "--field-selector=reason=MissedInjection", "-o", "json"
    ).stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _scrape(operator: Operator) -> Samples:
    url = f"http://127.0.0.1:{operator.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _missed_gauge(samples: Samples, namespace: str) -> float | None:
    key = frozenset({("namespace", namespace), ("syncconfig", "exp")})
    return samples.get(("trialsync_missed_injections", key))


def _ready_config(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    assert _apply(kube, namespace, syncconfig(name, spec)).returncode == 0
    wait_for(
        lambda: (_condition(kube, namespace, name, "Ready") or {}).get("status") == "True",
        30,
        what=f"{name} Ready",
    )


@pytest.fixture
def opted_out_ns(kube: Kube) -> Iterator[str]:
    """A namespace labelled out of injection (the webhooks' namespaceSelector)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    kube.kubectl("label", "namespace", name, "trialsync.io/injection=disabled")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_pods_admitted_while_the_operator_was_down_are_reported_within_30_s(
    kube: Kube, ignoring: Ignoring, ns: str, opted_out_ns: str
) -> None:
    ignoring.operator()
    _ready_config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    _ready_config(kube, ns, "off", {"syncer": "none"})
    _ready_config(kube, opted_out_ns, "exp", {"uploadDir": "s3://bucket/exp"})
    # Opted in, in a namespace the webhook never selects: no sidecar, by design.
    skipped = _apply(kube, opted_out_ns, opted_in_pod("skipped", "exp"))
    assert skipped.returncode == 0, skipped.stderr
    assert not sidecars(_get(kube, opted_out_ns, "pod", "skipped"))
    ignoring.stop()

    # Admitted as they are: the webhook cannot be called, and its failurePolicy is Ignore.
    pods = {
        "missed-a": opted_in_pod("missed-a", "exp"),
        "missed-b": opted_in_pod("missed-b", "exp"),
        "unlabelled": opted_in_pod("unlabelled", "exp", labelled=False),
        "no-config": opted_in_pod("no-config", "ghost"),  # would be refused now
        "disabled": opted_in_pod("disabled", "off"),  # would get no sidecar now
    }
    for name, pod in pods.items():
        created = _apply(kube, ns, pod)
        assert created.returncode == 0, created.stderr
        assert not sidecars(_get(kube, ns, "pod", name)), name

    started = time.monotonic()
    operator = ignoring.start()
    deadline = REPORT_WITHIN - (time.monotonic() - started)

    def reported() -> bool:
        events = _missed_events(kube, ns)
        condition = _condition(kube, ns, "exp", "MissedInjections") or {}
        return (
            {e["involvedObject"]["name"] for e in events} == {"missed-a", "missed-b"}
            and condition.get("status") == "True"
            and _missed_gauge(_scrape(operator), ns) == 2.0
        )

    wait_for(reported, deadline, interval=0.5, what="the missed injections reported")
    elapsed = time.monotonic() - started
    assert elapsed <= REPORT_WITHIN, elapsed

    events = _missed_events(kube, ns)
    assert len(events) == 2  # one per pod
    for event in events:
        pod = _get(kube, ns, "pod", event["involvedObject"]["name"])
        assert event["type"] == "Warning"
        assert event["involvedObject"]["kind"] == "Pod"
        assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
        assert "recreate the pod" in event["message"]
        assert "SyncConfig exp" in event["message"]
    condition = _condition(kube, ns, "exp", "MissedInjections")
    assert condition is not None
    assert condition["reason"] == "PodsWithoutSidecar"
    assert condition["message"].startswith("2 pod(s)")
    assert "missed-a, missed-b" in condition["message"]
    # Beside the reconciler's own condition, not instead of it.
    assert (_condition(kube, ns, "exp", "Ready") or {}).get("status") == "True"
    off = _condition(kube, ns, "off", "MissedInjections")
    assert off is not None
    assert (off["status"], off["reason"]) == ("False", "AllInjected")
    # The same scans saw the pod of the opted-out namespace, and left it out.
    assert _missed_events(kube, opted_out_ns) == []
    out = _condition(kube, opted_out_ns, "exp", "MissedInjections")
    assert out is not None
    assert (out["status"], out["reason"]) == ("False", "AllInjected")
    assert _missed_gauge(_scrape(operator), opted_out_ns) is None
    scraped = _scrape(operator)
    assert scraped["trialsync_operator_leader", frozenset()] == 1.0
    assert _missed_gauge(scraped, ns) == 2.0

    # A pod created while the operator is up gets its sidecar and is not reported.
    assert _apply(kube, ns, opted_in_pod("later", "exp")).returncode == 0
    assert sidecars(_get(kube, ns, "pod", "later"))
    # A missed pod deleted: the watch of the opted-in pods triggers a scan at once.
    kube.kubectl("delete", "pod", "missed-a", "-n", ns, "--wait=false")

    def one_left() -> dict[str, Any] | None:
        found = _condition(kube, ns, "exp", "MissedInjections") or {}
        if found.get("message", "").startswith("1 pod(s)"):
            return found
        return None

    condition = wait_for(one_left, 10, interval=0.2, what="the count down to 1")
    assert "missed-b" in condition["message"]
    assert "missed-a" not in condition["message"]
    wait_for(lambda: _missed_gauge(_scrape(operator), ns) == 1.0, 10, what="the gauge at 1")
    # No second Event for the pod still missed, none for the one that has its sidecar.
    assert sorted(e["involvedObject"]["name"] for e in _missed_events(kube, ns)) == [
        "missed-a",
        "missed-b",
    ]

    kube.kubectl("delete", "pod", "missed-b", "-n", ns, "--wait=false")
    wait_for(
        lambda: (_condition(kube, ns, "exp", "MissedInjections") or {}).get("status") == "False",
        10,
        interval=0.2,
        what="MissedInjections=False",
    )
    wait_for(lambda: _missed_gauge(_scrape(operator), ns) is None, 10, what="the series gone")


def _injection_samples(samples: Samples) -> Samples:
    return {
        key: value
        for key, value in samples.items()
        if key[0].startswith("trialsync_injection_") and key[0].endswith("_total")
    }


def _reason(name: str, reason: str = "") -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset({("reason", reason)}) if reason else frozenset())


def test_each_kind_of_admission_adds_exactly_its_counters(
    kube: Kube, ignoring: Ignoring, ns: str
) -> None:
    operator = ignoring.operator()
    _ready_config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    _ready_config(kube, ns, "off", {"syncer": "none"})
    # An invalid SyncConfig reaches the cluster only past the webhook: with it away.
    ignoring.stop()
    assert _apply(kube, ns, syncconfig("bad", {"uploadDir": "abfs://container/x"})).returncode == 0
    operator = ignoring.start()
    wait_for(lambda: _condition(kube, ns, "bad", "Ready"), 30, what="bad's status")

    latency = (
        "trialsync_operator_admission_duration_seconds_count",
        frozenset({("webhook", "mutate-pods")}),
    )
    before_all = _scrape(operator)
    before = _injection_samples(before_all)

    with_sidecar = opted_in_pod("copied", "exp")
    with_sidecar["spec"]["initContainers"] = [{"name": names.SIDECAR_NAME, "image": "x"}]
    # Its trainer already mounts a volume where the trial data's emptyDir would go.
    taken = opted_in_pod("taken", "exp", mount_path="/data")
    taken["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    taken["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    admitted = {
        "injected": opted_in_pod("injected", "exp"),
        "copied": with_sidecar,
        "disabled": opted_in_pod("disabled", "off"),
    }
    refused = {
        "ghost": opted_in_pod("ghost", "ghost"),
        "bad": opted_in_pod("bad", "bad"),
        "role": opted_in_pod("role", "exp", **{names.ROLE_ANNOTATION: "boss"}),
        "taken": taken,
    }
    for name, pod in admitted.items():
        created = _apply(kube, ns, pod)
        assert created.returncode == 0, (name, created.stderr)
    assert len(sidecars(_get(kube, ns, "pod", "injected"))) == 1
    for name, pod in refused.items():
        assert _apply(kube, ns, pod).returncode != 0, name
    # The objectSelector keeps unlabelled pods away; one sent anyway is left alone.
    unlabelled = opted_in_pod("unlabelled", "exp", labelled=False)
    unlabelled["metadata"]["namespace"] = ns
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.webhook_port}/mutate-pods",
        data=json.dumps(pod_admission_review(unlabelled, ns)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        answer = json.loads(response.read())["response"]
    assert answer["allowed"] is True
    assert "patch" not in answer

    after_all = _scrape(operator)
    after = _injection_samples(after_all)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    expected = {key: 0.0 for key in after}
    expected.update(
        {
            _reason("trialsync_injection_requests_total"): 8.0,
            _reason("trialsync_injection_success_total"): 1.0,
            _reason("trialsync_injection_skip_total", "already_injected"): 1.0,
            _reason("trialsync_injection_skip_total", "syncing_disabled"): 1.0,
            _reason("trialsync_injection_skip_total", "not_opted_in"): 1.0,
            _reason("trialsync_injection_failure_total", "syncconfig_missing"): 1.0,
            _reason("trialsync_injection_failure_total", "syncconfig_invalid"): 1.0,
            _reason("trialsync_injection_failure_total", "invalid_annotations"): 1.0,
            _reason("trialsync_injection_failure_total", "invalid_pod"): 1.0,
        }
    )
    assert delta == expected
    assert after_all[latency] - before_all[latency] == 8.0
