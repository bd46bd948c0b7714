"""The Helm chart: lint, schemas, the generated CRD copy, and RBAC that is exactly enough.

The RBAC test installs the chart into the test control plane and runs the operator as the
chart's ServiceAccount (a client certificate with its user name and groups), with the
chart's webhook configurations pointed at it: the whole flow must pass with those
permissions, and what the chart does not grant must be refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.control_plane import REPO_ROOT, Kube
from tests.support.operator_process import CRD_PATH, point_webhooks_at, start_operator
from tests.support.pods import sidecars
from tests.support.sidecar_process import wait_for
from trialsync_operator import names

pytestmark = pytest.mark.k8s
CHART = REPO_ROOT / "charts" / "trialsync"
RELEASE = "trialsync"


def _helm(kube: Kube, *args: str, check: bool = True) -> Any:
    if kube.helm_path is None:
        pytest.skip("no helm: run `make tools`")
    return kube.helm(*args, check=check)


def _render(kube: Kube, *sets: str, namespace: str = "trialsync-system") -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets]
    out = _helm(
        kube, "template", RELEASE, str(CHART), "-n", namespace, "--kube-version", "1.37.2", *flags
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_the_charts_crd_is_the_generated_copy_of_crds() -> None:
    copy = CHART / "crds" / "syncconfig.yaml"
    assert copy.read_bytes() == CRD_PATH.read_bytes(), "run `make crds`"


def test_helm_lint_strict_is_clean(kube: Kube) -> None:
    result = _helm(kube, "lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    "sets",
    [
        (),
        (
            "webhook.failurePolicy=Ignore",
            "operator.replicas=1",
            "operator.watchNamespaces={ml,tune}",
        ),
        (
            "webhook.excludeNamespaces={batch}",
            "webhook.onConfigError=admit",
            "operator.logLevel=debug",
        ),
    ],
    ids=["defaults", "ignore-one-replica-scoped", "excludes-admit"],
)
def test_rendered_manifests_are_valid_kubernetes_objects(kube: Kube, sets: tuple[str, ...]) -> None:
    namespace = kube.create_namespace(f"chart-{uuid.uuid4().hex[:8]}")
    docs = _render(kube, *sets, namespace=namespace)
    kinds = sorted(d["kind"] for d in docs)
    assert "Deployment" in kinds
    assert "MutatingWebhookConfiguration" in kinds
    stream = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    # The apiserver's own schemas, strictly: an unknown or misplaced field fails.
    validated = kube.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=stream,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr


def test_the_chart_labels_every_object_and_scopes_its_webhooks(kube: Kube) -> None:
    docs = _render(kube)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for part in ("name", "instance", "version", "managed-by"):
            key = f"app.kubernetes.io/{part}"
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"
    [mutating] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    [hook] = mutating["webhooks"]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["objectSelector"] == {"matchLabels": {"trialsync.io/inject": "true"}}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert set(excluded) >= {"kube-system", "kube-public", "kube-node-lease", "trialsync-system"}
    assert hook["clientConfig"]["service"]["path"] == "/mutate-pods"
    assert "trialsync-operator" in hook["matchConditions"][0]["expression"]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 5)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)


def test_cert_manager_mode_issues_the_certificate_and_injects_the_ca(kube: Kube) -> None:
    docs = _render(kube, "certificates.certManager.enabled=true")
    [certificate] = [d for d in docs if d["kind"] == "Certificate"]
    assert "trialsync-webhook.trialsync-system.svc" in certificate["spec"]["dnsNames"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        [config] = [d for d in docs if d["kind"] == kind]
        assert (
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            == "trialsync-system/trialsync-webhook-tls"
        )
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert "--cert-mode=files" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
        ("operator.replicas=0", "replicas"),
        ("sidecar.schemes={S3}", "schemes"),
        ("operator.unknown=1", "unknown"),
    ],
)
def test_the_values_schema_refuses_bad_values(kube: Kube, value: str, says: str) -> None:
    result = _helm(
        kube,
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        "1.37.2",
        f"--set={value}",
        check=False,
    )
    assert result.returncode != 0
    assert says in result.stderr


@pytest.fixture
def installed(kube: Kube) -> Iterator[str]:
    """The chart installed into the test control plane (pods never run here)."""
    if not kube.local:
        pytest.skip("the operator process serves webhooks on this host's 127.0.0.1")
    namespace = "trialsync-system"
    _helm(kube, "upgrade", "--install", RELEASE, str(CHART), "-n", namespace, "--create-namespace")
    yield namespace
    _helm(kube, "uninstall", RELEASE, "-n", namespace, check=False)


def test_the_operator_works_with_exactly_the_charts_permissions(
    kube: Kube, installed: str, tmp_path: Path
) -> None:
    account = f"system:serviceaccount:{installed}:trialsync-operator"
    groups = [
        "system:serviceaccounts",
        f"system:serviceaccounts:{installed}",
        "system:authenticated",
    ]
    as_operator = kube.user_kubeconfig(account, groups)
    operator = start_operator(
        kube,
        tmp_path,
        extra_args=[
            "--lease-name",
            "trialsync-operator",
            "--tls-secret",
            "trialsync-webhook-tls",
            "--service",
            "trialsync-webhook",
        ],
        webhook_name="trialsync",
        install_webhooks=False,
        kubeconfig=as_operator,
        namespace=installed,
    )
    try:
        point_webhooks_at(kube, operator.webhook_port, name="trialsync")
        ns = kube.create_namespace(f"rbac-{uuid.uuid4().hex[:8]}")
        local = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": "local"},
            "spec": {},
        }
        kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(local))
        status = wait_for(
            lambda: json.loads(
                kube.kubectl("get", "syncconfig", "local", "-n", ns, "-o", "json").stdout
            ).get("status"),
            30,
            what="the status the operator writes",
        )
        assert status["conditions"][0]["status"] == "True"
        wait_for(
            lambda: (
                kube.kubectl(
                    "get", "service", names.head_service_name("local"), "-n", ns, check=False
                ).returncode
                == 0
            ),
            30,
            what="the head Service",
        )
        kube.kubectl("get", "secret", names.head_secret_name("local"), "-n", ns)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "worker",
                "labels": {names.INJECT_LABEL: "true"},
                "annotations": {
                    names.CONFIG_ANNOTATION: "local",
                    names.MOUNT_PATH_ANNOTATION: "/r",
                },
            },
            "spec": {
                "terminationGracePeriodSeconds": 60,
                "containers": [{"name": "t", "image": "t:1"}],
            },
        }
        kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
        assert (
            len(
                sidecars(
                    json.loads(kube.kubectl("get", "pod", "worker", "-n", ns, "-o", "json").stdout)
                )
            )
            == 1
        )
        kube.kubectl("get", "lease", "trialsync-operator", "-n", installed)
        kube.kubectl("get", "secret", "trialsync-webhook-tls", "-n", installed)
        config = json.loads(
            kube.kubectl("get", "mutatingwebhookconfiguration", "trialsync", "-o", "json").stdout
        )
        assert config["webhooks"][0]["clientConfig"]["caBundle"]
        # Nothing it tried was refused (a transient 429 of a new CRD's storage may be).
        assert "Forbidden" not in operator.log()
        assert "HTTP 403" not in operator.log()
    finally:
        operator.stop()

    # What the chart does not grant is refused.
    for verb, resource, where in [
        ("get", "secrets", ["-n", "default"]),
        ("list", "secrets", ["--all-namespaces"]),
        ("get", "pods", ["-n", "default"]),
        ("delete", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("update", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("update", "mutatingwebhookconfigurations/other", []),
        ("create", "clusterrolebindings", []),
        ("get", "secrets/some-other-secret", ["-n", installed]),
    ]:
        answer = kube.kubectl(
            "auth", "can-i", verb, resource, *where, f"--as={account}", check=False
        ).stdout.strip()
        assert answer == "no", f"the chart grants {verb} {resource} {where}"
