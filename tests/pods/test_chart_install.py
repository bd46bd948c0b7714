"""The Helm chart on the local cluster: the user's whole path, and what goes wrong.

``helm install`` puts the operator in a Deployment (two replicas, its own ServiceAccount
and RBAC, the webhook behind its Service, a certificate it manages itself); a SyncConfig
and a labelled Job then run to Complete with every checkpoint published. The tests go on
in order through a certificate rotation and an upgrade under load, the operator scaled to
zero under both failure policies, and an uninstall that leaves nothing blocking pods.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.control_plane import REPO_ROOT
from localcluster.harness import Cluster, Manifest
from tests.pods.trial_pods import (
    MANIFEST_NAME,
    TRIAL_ROOT,
    apply_s3_syncconfig,
    bucket_objects,
    job_pod,
    opted_in,
    trainer,
    trainer_events,
    training_job,
    written_files,
)
from tests.support.monitoring import Prometheus
from tests.support.pods import sidecars, syncconfig
from tests.support.sidecar_process import wait_for
from trialsync import contract
from trialsync_operator import names

pytestmark = pytest.mark.timeout(900)
CHART = REPO_ROOT / "charts" / "trialsync"
RELEASE = "trialsync"
NAMESPACE = "trialsync"
OPERATOR = "system:serviceaccount:trialsync:trialsync-operator"


def _helm(cluster: Cluster, *args: str, check: bool = True) -> Any:
    if cluster.kube.helm_path is None:
        pytest.fail("no helm beside the cluster's binaries: run `make tools`")
    return cluster.kube.helm(*args, check=check)


def _values(cluster: Cluster) -> list[str]:
    """The images loaded into the node (the chart's defaults name the same ones)."""
    operator, _, operator_tag = cluster.images.operator.rpartition(":")
    sidecar, _, sidecar_tag = cluster.images.sidecar.rpartition(":")
    return [
        f"--set=operator.image.repository={operator}",
        f"--set=operator.image.tag={operator_tag}",
        f"--set=sidecar.image.repository={sidecar}",
        f"--set=sidecar.image.tag={sidecar_tag}",
    ]


def _operator_pods(cluster: Cluster, terminating: bool = False) -> list[Manifest]:
    out = cluster.kube.kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator", "-o", "json"
    ).stdout
    # Unless asked, not the ones on their way out: they answer admissions for their
    # shutdown delay while their Service drops them.
    pods: list[Manifest] = json.loads(out)["items"]
    return [p for p in pods if terminating or not p["metadata"].get("deletionTimestamp")]


@pytest.fixture(scope="module")
def installed(cluster: Cluster, cluster_timings: dict[str, float]) -> Iterator[str]:
    """The chart installed with --wait; uninstalled (and checked gone) at the end."""
    started = time.monotonic()
    _helm(
        cluster,
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
        "--wait", "--timeout=5m", *_values(cluster),
    )  # fmt: skip
    cluster_timings["helm install to operator Ready"] = time.monotonic() - started
    try:
        yield NAMESPACE
    finally:
        _helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.kube.kubectl("delete", kind, RELEASE, "--ignore-not-found", check=False)


def _idle_pod(name: str, config: str, image: str, labelled: bool = True) -> Manifest:
    meta = opted_in(config) if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "idle", "image": image, "command": ["sleep", "3600"]}],
        },
    }


def _create(cluster: Cluster, ns: str, body: Manifest) -> Any:
    return cluster.kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body), check=False)


def test_helm_install_brings_up_two_ready_replicas_that_inject_through_the_service(
    cluster: Cluster, installed: str, cluster_namespace: str
) -> None:
    pods = _operator_pods(cluster)
    assert len(pods) == 2
    for pod in pods:
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
        assert pod["spec"]["serviceAccountName"] == "trialsync-operator"
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    ns = cluster_namespace
    cluster.apply(syncconfig("exp", {"uploadDir": "s3://bucket/x"}), ns)
    cluster.wait_for("syncconfig", "exp", ns, "condition=Ready", 60)
    created = _create(cluster, ns, _idle_pod("probe", "exp", cluster.images.sidecar))
    assert created.returncode == 0, created.stderr
    assert len(sidecars(cluster.get("pod", "probe", ns))) == 1
    holder = cluster.get("lease", "trialsync-operator", installed)["spec"]["holderIdentity"]
    assert holder in {p["metadata"]["name"] for p in pods}


def test_a_syncconfig_and_a_labelled_job_publish_every_checkpoint(
    cluster: Cluster, installed: str, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns)
    row = cluster.kube.kubectl("get", "syncconfig", "exp", "-n", ns, "--no-headers").stdout.split()
    assert row[1:5] == [f"s3://{bucket}/results", "300", "1800", "True"]
    job = training_job(
        "train", opted_in("exp"), trainer(cluster.images.sidecar, trial="t0", checkpoints=3)
    )
    cluster.apply(job, ns)
    cluster.wait_for("job", "train", ns, "condition=Complete", 240)
    pod = job_pod(cluster, "train", ns)
    written = written_files(trainer_events(cluster.logs(pod["metadata"]["name"], ns, "trainer")))
    objects = bucket_objects(cluster_s3.server, bucket, "results/")
    for rel in written:
        assert f"results/exp/t0/{rel}" in objects
        assert f"results/exp/t0/{rel.split('/')[0]}/{MANIFEST_NAME}" in objects


def test_the_head_node_scenario_runs_through_the_charts_operator(
    cluster: Cluster, installed: str, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(
        syncconfig("local", {"checkpointSettleSeconds": 1, "finalSyncTimeoutSeconds": 20}), ns
    )
    cluster.wait_for("syncconfig", "local", ns, "condition=Ready", 60)
    user = {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}
    head = _idle_pod("head", "local", cluster.images.sidecar)
    head["metadata"]["annotations"][names.ROLE_ANNOTATION] = "head"
    head["spec"]["securityContext"] = user
    cluster.apply(head, ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready", 120)
    worker = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker", **opted_in("local")},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "securityContext": user,
            "containers": [
                trainer(cluster.images.sidecar, trial="t1", checkpoints=2, size=4096, trigger=True)
            ],
        },
    }
    cluster.apply(worker, ns)
    done = cluster.poll_pod(
        "worker", ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "finished", 180
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    listed = cluster.kube.kubectl(
        "exec", "head", "-n", ns, "-c", "idle", "--", "find", TRIAL_ROOT, "-name", MANIFEST_NAME
    ).stdout.split()
    assert sorted(listed) == [
        f"{TRIAL_ROOT}/exp/t1/checkpoint_00000{i}/{MANIFEST_NAME}" for i in (1, 2)
    ]


def _served_certificates(cluster: Cluster) -> set[str]:
    """The fingerprint of the certificate each operator replica serves."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    prints = set()
    for pod in _operator_pods(cluster):
        with (
            cluster.forward(pod["status"]["podIP"], 9443) as (host, port),
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            prints.add(hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest())
    return prints


class _PodStream:
    """Creates labelled pods one after another until stopped, as server-side dry runs: each
    goes through admission (the webhook injects it) but none is stored or scheduled, so
    the node's capacity never runs out. Records every failure and every pod that came
    back without its sidecar."""

    def __init__(self, cluster: Cluster, ns: str, config: str) -> None:
        self.cluster, self.ns, self.config = cluster, ns, config
        self.created: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"stream-{i}"
            body = json.dumps(_idle_pod(name, self.config, self.cluster.images.sidecar))
            result = self.cluster.kube.kubectl(
                "create", "-n", self.ns, "--dry-run=server", "-o", "json", "-f", "-",
                input=body, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                self.failures.append(f"{name}: {result.stderr}")
            elif len(sidecars(json.loads(result.stdout))) != 1:
                self.failures.append(f"{name}: admitted without its sidecar")
            else:
                self.created.append(name)
            i += 1

    def __enter__(self) -> _PodStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_forced_certificate_rotation_fails_no_pod_creation(
    cluster: Cluster, installed: str, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(syncconfig("exp", {"uploadDir": "s3://bucket/x"}), ns)
    cluster.wait_for("syncconfig", "exp", ns, "condition=Ready", 60)
    before = _served_certificates(cluster)
    assert len(before) == 1  # every replica serves the Secret's certificate
    with _PodStream(cluster, ns, "exp") as stream:
        wait_for(lambda: len(stream.created) >= 3, 60, what="pods before the rotation")
        cluster.kube.kubectl(
            "annotate",
            "secret",
            "trialsync-webhook-tls",
            "-n",
            installed,
            "trialsync.io/rotate=now",
        )
        after = wait_for(
            lambda: (
                (now := _served_certificates(cluster))
                and not now & before
                and len(now) == 1
                and now
            ),
            120,
            what="every replica serving the new certificate",
        )
        count = len(stream.created)
        wait_for(lambda: len(stream.created) >= count + 3, 60, what="pods after the rotation")
    # What every replica serves now is the certificate the leader wrote to the Secret.
    secret = cluster.get("secret", "trialsync-webhook-tls", installed)
    issued = ssl.PEM_cert_to_DER_cert(base64.b64decode(secret["data"]["tls.crt"]).decode())
    assert after == {hashlib.sha256(issued).hexdigest()}
    assert not stream.failures, stream.failures


def test_helm_upgrade_rolls_the_replicas_without_a_failed_admission(
    cluster: Cluster, installed: str, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(syncconfig("exp", {"uploadDir": "s3://bucket/x"}), ns)
    cluster.wait_for("syncconfig", "exp", ns, "condition=Ready", 60)
    old = {p["metadata"]["name"] for p in _operator_pods(cluster)}
    with _PodStream(cluster, ns, "exp") as stream:
        wait_for(lambda: len(stream.created) >= 3, 60, what="pods before the upgrade")
        _helm(
            cluster,
            "upgrade", RELEASE, str(CHART), "-n", installed, "--wait", "--timeout=5m",
            "--set=operator.logLevel=debug", *_values(cluster),
        )  # fmt: skip
        count = len(stream.created)
        wait_for(lambda: len(stream.created) >= count + 3, 60, what="pods after the upgrade")
    new = {p["metadata"]["name"] for p in _operator_pods(cluster)}
    assert not new & old, "the upgrade did not replace the replicas"
    assert not stream.failures, stream.failures


def test_with_the_operator_scaled_to_zero_the_failure_policy_decides(
    cluster: Cluster, installed: str, cluster_namespace: str, cluster_timings: dict[str, float]
) -> None:
    ns = cluster_namespace
    cluster.apply(syncconfig("exp", {"uploadDir": "s3://bucket/x"}), ns)
    deployment = "deployment/trialsync-operator"
    cluster.kube.kubectl("scale", deployment, "-n", installed, "--replicas=0")
    wait_for(lambda: not _operator_pods(cluster, terminating=True), 120, what="no operator pod")
    try:
        refused = _create(cluster, ns, _idle_pod("refused", "exp", cluster.images.sidecar))
        assert refused.returncode != 0
        assert 'failed calling webhook "pods.trialsync.io"' in refused.stderr
        plain = _create(
            cluster, ns, _idle_pod("plain", "exp", cluster.images.sidecar, labelled=False)
        )
        assert plain.returncode == 0, plain.stderr

        _helm(
            cluster,
            "upgrade", RELEASE, str(CHART), "-n", installed, "--reuse-values",
            "--set=webhook.failurePolicy=Ignore", "--set=operator.replicas=1",
        )  # fmt: skip
        cluster.kube.kubectl("scale", deployment, "-n", installed, "--replicas=0")
        wait_for(lambda: not _operator_pods(cluster, terminating=True), 120, what="no operator pod")
        admitted = _create(cluster, ns, _idle_pod("admitted", "exp", cluster.images.sidecar))
        assert admitted.returncode == 0, admitted.stderr
        assert not sidecars(cluster.get("pod", "admitted", ns))
    finally:
        _helm(
            cluster,
            "upgrade", RELEASE, str(CHART), "-n", installed, "--reuse-values", "--wait",
            "--set=webhook.failurePolicy=Fail", "--set=operator.replicas=2",
        )  # fmt: skip
    # Back up, the operator finds the pod admitted without its sidecar within 30 s of
    # leading: an Event on the pod and a condition on its SyncConfig.
    back = time.monotonic()

    def reported() -> bool:
        condition = _condition(cluster.get("syncconfig", "exp", ns), "MissedInjections")
        return bool(condition and condition["status"] == "True" and _missed_events(cluster, ns))

    wait_for(reported, 30 + LEASE_TAKEOVER_S, what="the missed injection reported")
    cluster_timings["operator back to a missed injection reported"] = time.monotonic() - back
    condition = _condition(cluster.get("syncconfig", "exp", ns), "MissedInjections")
    assert condition is not None
    assert "admitted" in condition["message"]
    assert _missed_events(cluster, ns) == {"admitted"}, "only the pod without its sidecar"


#: The syncPeriod of the test's SyncConfig: how often the leader polls its pods' sidecars.
SYNC_PERIOD_S = 5

#: How long a new replica may wait for the old leader's Lease to expire before it leads.
LEASE_TAKEOVER_S = 20


def _condition(obj: Manifest, kind: str) -> dict[str, Any] | None:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((dict(c) for c in conditions if c["type"] == kind), None)


def _missed_events(cluster: Cluster, ns: str) -> set[str]:
    """The pods of ``ns`` with a MissedInjection Event."""
    out = cluster.kube.kubectl(
        "get", "events", "-n", ns, "--field-selector=reason=MissedInjection", "-o", "json"
    ).stdout
    return {e["involvedObject"]["name"] for e in json.loads(out)["items"]}


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text ``text``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def test_a_prometheus_on_the_node_scrapes_the_operator_and_the_sidecars(
    cluster: Cluster,
    installed: str,
    cluster_s3: ClusterS3,
    cluster_namespace: str,
    tmp_path: Path,
) -> None:
    """A real Prometheus in the node's network scrapes the operator's replicas and an
    injected sidecar at their pod IPs, as an in-cluster Prometheus would: what it holds is
    what they counted (the injection of this test's pod, every checkpoint it published)."""
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns, syncPeriod=SYNC_PERIOD_S)
    operators = [p["status"]["podIP"] for p in _operator_pods(cluster)]

    def injected_so_far() -> float:
        total = 0.0
        for ip in operators:
            with (
                cluster.forward(ip, 8080) as (host, port),
                urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer,
            ):
                total += _metric(answer.read().decode(), "trialsync_injection_success_total")
        return total

    before = injected_so_far()
    checkpoints = 3
    container = trainer(cluster.images.sidecar, trial="t0", checkpoints=checkpoints, then="sleep")
    cluster.apply(training_job("scraped", opted_in("exp"), container), ns)
    # The Job's pod may not exist yet when the first look comes: none is no IP yet.
    wait_for(
        lambda: cluster.kube.kubectl(
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "job-name=scraped",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ).stdout.strip(),
        120,
        what="a pod IP",
    )
    pod_ip = job_pod(cluster, "scraped", ns)["status"]["podIP"]

    prefix = "results/exp/t0/"
    manifests = {f"{prefix}checkpoint_{i:06d}/{MANIFEST_NAME}" for i in range(1, checkpoints + 1)}
    wait_for(
        lambda: manifests <= set(bucket_objects(cluster_s3.server, bucket, prefix)),
        120,
        what="every checkpoint published",
    )

    # The leader polls the sidecar at its pod IP once per syncPeriod and counts it.
    def counted() -> Any:
        status = cluster.get("syncconfig", "exp", ns).get("status", {})
        newest = status.get("newestCheckpoint", {}).get("path", "")
        return status if newest.endswith(f"checkpoint_{checkpoints:06d}") else None

    status = wait_for(counted, 3 * SYNC_PERIOD_S + 10, what="the pod counted as synced")
    assert status["pods"]["total"] == 1
    assert status["pods"]["synced"] == 1
    assert status["newestCheckpoint"]["pod"] == job_pod(cluster, "scraped", ns)["metadata"]["name"]
    table = cluster.kube.kubectl("get", "syncconfig", "exp", "-n", ns, "-o", "wide").stdout
    print(f"\nkubectl get syncconfig -o wide, on the node:\n{table}")
    row = cluster.kube.kubectl("get", "syncconfig", "exp", "-n", ns, "--no-headers").stdout
    # NAME UPLOAD-DIR PERIOD TIMEOUT READY | PODS SYNCED LAGGING FAILING | NEWEST AGE
    assert row.split()[5:9] == ["1", "1", "0", "0"], table

    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    jobs = {
        "trialsync-operator": [f"{ip}:8080" for ip in operators],
        "trialsync-sidecar": [f"{pod_ip}:{contract.HTTP_PORT}"],
    }
    prometheus = Prometheus(jobs, workdir, popen=cluster.popen_in_netns)
    try:
        with cluster.forward("127.0.0.1", prometheus.port) as (host, port):
            prometheus.api = f"{host}:{port}"
            wait_for(prometheus.ready, 60, what="prometheus ready")
            wait_for(
                lambda: prometheus.value("sum(up)") == len(operators) + 1,
                60,
                what="every target scraped",
            )
            injected = prometheus.value("sum(trialsync_injection_success_total)")
            assert injected == before + 1
            assert prometheus.value("sum(trialsync_checkpoints_published_total)") == checkpoints
            assert (
                prometheus.value(
                    'sum(trialsync_publish_latency_seconds_count{job="trialsync-sidecar"})'
                )
                == checkpoints
            )
            puts = prometheus.value('sum(trialsync_store_requests_total{operation="put"})')
            assert puts is not None
            assert puts >= len(bucket_objects(cluster_s3.server, bucket, prefix))
            assert prometheus.value("sum(trialsync_operator_leader)") == 1
    finally:
        prometheus.stop()


def test_the_charts_service_account_is_refused_what_the_chart_does_not_grant(
    cluster: Cluster, installed: str
) -> None:
    for verb, resource, where in [
        ("list", "secrets", ["--all-namespaces"]),
        ("get", "pods", ["-n", "default"]),
        ("delete", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("create", "clusterrolebindings", []),
    ]:
        answer = cluster.kube.kubectl(
            "auth", "can-i", verb, resource, *where, f"--as={OPERATOR}", check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource)
    granted = cluster.kube.kubectl(
        "auth",
        "can-i",
        "patch",
        "syncconfigs.trialsync.io",
        "--subresource=status",
        "-n",
        "default",
        f"--as={OPERATOR}",
        check=False,
    )
    assert granted.stdout.strip() == "yes"


def test_helm_uninstall_leaves_no_webhook_that_could_block_pods(
    cluster: Cluster, installed: str, cluster_namespace: str
) -> None:
    _helm(cluster, "uninstall", RELEASE, "-n", installed, "--wait")
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        listed = cluster.kube.kubectl("get", kind, "-o", "name").stdout.split()
        assert not [n for n in listed if n.endswith(f"/{RELEASE}")], listed
    ns = cluster_namespace
    created = _create(cluster, ns, _idle_pod("after", "exp", cluster.images.sidecar))
    assert created.returncode == 0, created.stderr
    assert not sidecars(cluster.get("pod", "after", ns))
    # The CRD stays (helm never deletes CRDs): SyncConfigs, and the data they describe, survive.
    cluster.kube.kubectl("get", "crd", "syncconfigs.trialsync.io")
