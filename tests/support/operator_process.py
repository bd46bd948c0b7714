"""The real ``trialsync-operator`` as a process beside the test control plane.

``start_operator`` applies the CRD and our own webhook configurations (what the chart
installs, with a ``url`` clientConfig on 127.0.0.1 instead of a Service), creates the
operator's namespace, starts the operator and waits for ``/readyz``. The operator fills
in both caBundles itself (certificate mode ``self``), as it does in a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.control_plane import REPO_ROOT, Kube
from localcluster.processes import free_ports, stop, tail
from tests.support.pods import TEST_ALLOWED_IMAGES
from tests.support.requirements import external_cluster_only

CRD_PATH = REPO_ROOT / "crds" / "syncconfig.yaml"
OPERATOR_NAMESPACE = "trialsync-system"
WEBHOOK_NAME = "trialsync-test"
#: Namespaces the webhooks never see (as the chart excludes them).
EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", OPERATOR_NAMESPACE)
OPT_OUT_LABEL = "trialsync.io/injection"


def webhook_configurations(
    name: str, base_url: str, failure_policy: str = "Fail", timeout: int = 10
) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration as the chart renders them, but
    with a ``url`` clientConfig (``base_url`` + path) instead of the Service."""
    namespace_selector = {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": list(EXCLUDED_NAMESPACES),
            },
            {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["disabled"]},
        ]
    }
    operator_sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:trialsync-operator"
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.trialsync.io",
                "clientConfig": {"url": f"{base_url}/mutate-pods"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {"matchLabels": {"trialsync.io/inject": "true"}},
                "namespaceSelector": namespace_selector,
                "matchConditions": [
                    {
                        "name": "not-the-operator",
                        "expression": f"request.userInfo.username != '{operator_sa}'",
                    }
                ],
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": failure_policy,
                "reinvocationPolicy": "Never",
                "timeoutSeconds": timeout,
            }
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "syncconfigs.trialsync.io",
                "clientConfig": {"url": f"{base_url}/validate-syncconfigs"},
                "rules": [
                    {
                        "apiGroups": ["trialsync.io"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["syncconfigs"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": namespace_selector,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": timeout,
            }
        ],
    }
    return [mutating, validating]


@dataclass
class Operator:
    """A running ``trialsync-operator``; ``stop()`` sends SIGTERM."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    webhook_port: int
    args: list[str] = field(default_factory=list)

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}{path}", timeout=2
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/readyz") != 200:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"trialsync-operator exited with {code}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"trialsync-operator not ready after {timeout}s:\n{self._tail()}"
                )
            time.sleep(0.1)

    def _tail(self) -> str:
        return tail(self.log_path, 60)

    def stop(self) -> None:
        stop(self.proc, timeout=20)


def pod_admission_review(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """An AdmissionReview of a pod CREATE in ``namespace``, as the apiserver sends one."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": pod,
            "dryRun": False,
        },
    }


def apply_crd(kube: Kube) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/syncconfigs.trialsync.io", "--timeout=30s"
    )


def start_operator(
    kube: Kube,
    workdir: Path,
    extra_args: Sequence[str] = (),
    webhook_name: str = WEBHOOK_NAME,
    failure_policy: str = "Fail",
    install_webhooks: bool = True,
    identity: str = "",
    kubeconfig: Path | None = None,
    namespace: str = OPERATOR_NAMESPACE,
    allowed_images: Sequence[str] = TEST_ALLOWED_IMAGES,
    ports: tuple[int, int] | None = None,
) -> Operator:
    """Start the operator; the CRD and (by default) our webhook configurations first.

    ``kubeconfig`` (default: the admin's) is who the operator runs as; ``allowed_images``
    the images its SyncConfigs may name besides its own (default: those the tests name);
    ``ports`` (health, webhook; default: free ones) lets a test point configurations at it
    before it starts.
    """
    apply_crd(kube)
    kube.create_namespace(namespace)
    health_port, webhook_port = ports or free_ports(2)
    if install_webhooks:
        for config in webhook_configurations(
            webhook_name, f"https://127.0.0.1:{webhook_port}", failure_policy
        ):
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(config))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"operator-{webhook_port}.log"
    args = [
        "--kubeconfig", str(kubeconfig or kube.kubeconfig),
        "--webhook-addr", "127.0.0.1",
        "--webhook-port", str(webhook_port),
        "--health-addr", "127.0.0.1",
        "--health-port", str(health_port),
        "--cert-dir", str(workdir / f"certs-{webhook_port}"),
        "--cert-host", "127.0.0.1",
        "--namespace", namespace,
        "--mutating-webhook", webhook_name,
        "--validating-webhook", webhook_name,
        "--identity", identity or f"test-{webhook_port}",
        *(f"--allowed-sidecar-image={image}" for image in allowed_images),
        *extra_args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALSYNC_OPERATOR_")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trialsync_operator.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    operator = Operator(proc, log_path, health_port, webhook_port, args)
    try:
        operator.wait_ready()
    except BaseException:
        operator.stop()
        raise
    return operator


def point_webhooks_at(kube: Kube, port: int, name: str = WEBHOOK_NAME) -> None:
    """Send both webhooks to the operator on 127.0.0.1:``port`` (another replica, as a
    Service would after one is gone; or the process the tests run, for the chart's)."""
    for kind, path in (
        ("mutatingwebhookconfiguration", "mutate-pods"),
        ("validatingwebhookconfiguration", "validate-syncconfigs"),
    ):
        config = json.loads(kube.kubectl("get", kind, name, "-o", "json").stdout)
        url = f"https://127.0.0.1:{port}/{path}"
        patch: list[dict[str, Any]] = [
            {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url}
        ]
        if "service" in config["webhooks"][0]["clientConfig"]:
            patch.insert(0, {"op": "remove", "path": "/webhooks/0/clientConfig/service"})
        kube.kubectl("patch", kind, name, "--type=json", "-p", json.dumps(patch))


def delete_webhooks(kube: Kube, name: str = WEBHOOK_NAME) -> None:
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        kube.kubectl("delete", kind, name, "--ignore-not-found")


@pytest.fixture(scope="module")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator with its webhooks registered, for one test module."""
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    running = start_operator(kube, tmp_path_factory.mktemp("operator"))
    try:
        yield running
    finally:
        delete_webhooks(kube)
        running.stop()
