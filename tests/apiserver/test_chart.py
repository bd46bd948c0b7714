"""The Helm chart: lint, schemas, the generated CRD copy, and RBAC that is exactly enough.

The RBAC test installs the chart into the test control plane and runs the operator as the
chart's ServiceAccount (a client certificate with its user name and groups), with the
chart's webhook configurations pointed at it: the whole flow must pass with those
permissions, and what the chart does not grant must be refused.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.control_plane import REPO_ROOT, Kube
from tests.support.operator_process import CRD_PATH, point_webhooks_at, start_operator
from tests.support.pods import opted_in_pod, sidecars, syncconfig
from tests.support.requirements import external_cluster_only, unavailable
from tests.support.sidecar_process import wait_for
from trialsync_operator import names

pytestmark = pytest.mark.k8s
CHART = REPO_ROOT / "charts" / "trialsync"
RELEASE = "trialsync"


def _helm(kube: Kube, *args: str, check: bool = True) -> Any:
    if kube.helm_path is None:
        unavailable("no helm: run `make tools`")
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
            "sidecar.allowedImages={registry.example.com/team/*,mirror.example.com/s:1}",
        ),
    ],
    ids=["defaults", "ignore-one-replica-scoped", "excludes-admit"],
)
def test_rendered_manifests_are_valid_kubernetes_objects(kube: Kube, sets: tuple[str, ...]) -> None:
    namespace = kube.create_namespace(f"chart-{uuid.uuid4().hex[:8]}")
    for watched in _watched_namespaces(sets):  # the chart puts Roles there
        kube.create_namespace(watched)
    docs = _render(kube, *sets, namespace=namespace)
    kinds = sorted(d["kind"] for d in docs)
    assert "Deployment" in kinds
    assert "MutatingWebhookConfiguration" in kinds
    stream = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    # The apiserver's own schemas, strictly: an unknown or misplaced field fails. Every
    # namespaced object names its namespace (the release's, or a watched one).
    validated = kube.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=stream,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr


def _watched_namespaces(sets: tuple[str, ...]) -> list[str]:
    prefix = "operator.watchNamespaces="
    return [
        ns for s in sets if s.startswith(prefix) for ns in s[len(prefix) :].strip("{}").split(",")
    ]


def _rules(docs: list[dict[str, Any]], kind: str, namespace: str | None = None) -> list[Any]:
    return [
        rule
        for d in docs
        if d["kind"] == kind and d["metadata"].get("namespace") == namespace
        for rule in d["rules"]
    ]


def _grants(rules: list[Any], resource: str) -> set[str]:
    return {verb for r in rules if resource in r["resources"] for verb in r["verbs"]}


def test_the_operator_is_granted_only_the_verbs_it_calls(kube: Kube) -> None:
    cluster_wide = _rules(_render(kube), "ClusterRole")
    # kopf lists and watches; nothing GETs a single SyncConfig; the leader patches the
    # finalizer that keeps a head-node service for the pods that use it.
    assert _grants(cluster_wide, "syncconfigs") == {"list", "watch", "patch"}
    assert _grants(cluster_wide, "syncconfigs/status") == {"patch"}
    assert _grants(cluster_wide, "secrets") == {"create"}
    assert _grants(cluster_wide, "events") == {"create"}
    assert _grants(cluster_wide, "services") == {"get", "create", "patch", "delete"}
    # Listed (by label) only to know when the last pod using a head-node service is gone.
    assert _grants(cluster_wide, "pods") == {"list", "watch"}


def test_watched_namespaces_get_roles_instead_of_cluster_wide_syncconfig_rules(
    kube: Kube,
) -> None:
    docs = _render(kube, "operator.watchNamespaces={ml,tune}")
    cluster_wide = _rules(docs, "ClusterRole")
    for resource in ("syncconfigs", "syncconfigs/status", "secrets", "events", "services"):
        assert not _grants(cluster_wide, resource), resource
    assert _grants(cluster_wide, "mutatingwebhookconfigurations") == {"get", "update"}
    for namespace in ("ml", "tune"):
        rules = _rules(docs, "Role", namespace)
        assert _grants(rules, "syncconfigs") == {"list", "watch", "patch"}
        assert _grants(rules, "services") == {"get", "create", "patch", "delete"}
        [binding] = [
            d
            for d in docs
            if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == namespace
        ]
        assert binding["subjects"][0]["name"] == "trialsync-operator"
        assert binding["subjects"][0]["namespace"] == "trialsync-system"


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
    certificates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    serving = certificates["trialsync-webhook-tls"]
    assert "trialsync-webhook.trialsync-system.svc" in serving["spec"]["dnsNames"]
    # A CA signs the serving certificate, so renewing it leaves the caBundle as it is.
    assert not serving["spec"].get("isCA")
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    ca = certificates["trialsync-webhook-ca"]
    assert ca["spec"]["isCA"] is True
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        [config] = [d for d in docs if d["kind"] == kind]
        assert (
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            == "trialsync-system/trialsync-webhook-tls"
        )
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert "--cert-mode=files" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_only_values_the_operator_reads_roll_its_replicas(kube: Kube) -> None:
    def template(*sets: str) -> Any:
        [deployment] = [d for d in _render(kube, *sets) if d["kind"] == "Deployment"]
        return deployment["spec"]["template"]

    default = template()
    webhook_only = ("webhook.failurePolicy=Ignore", "webhook.timeoutSeconds=3")
    assert template(*webhook_only) == default
    assert template("webhook.onConfigError=admit") != default


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=11", "timeoutSeconds"),
        ("operator.replicas=0", "replicas"),
        ("sidecar.schemes={S3}", "schemes"),
        ("operator.unknown=1", "unknown"),
        ("certificates.rotateBeforeDays=365", "rotateBeforeDays"),
        ("sidecar.allowedImages={registry.example.com/*/s}", "allowedImages"),
        ("sidecar.allowedImages={me/s'1}", "allowedImages"),
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


@dataclasses.dataclass(frozen=True)
class Installed:
    namespace: str  # the release's
    workload: str  # where the test's SyncConfig and pod go
    watched: bool  # operator.watchNamespaces=[workload]


@pytest.fixture(params=[False, True], ids=["cluster-wide", "watched-namespace"])
def installed(kube: Kube, request: pytest.FixtureRequest) -> Iterator[Installed]:
    """The chart installed into the test control plane (pods never run here)."""
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    namespace = "trialsync-system"
    workload = kube.create_namespace(f"rbac-{uuid.uuid4().hex[:8]}")
    sets = [f"--set=operator.watchNamespaces={{{workload}}}"] if request.param else []
    _helm(
        kube,
        "upgrade", "--install", RELEASE, str(CHART), "-n", namespace, "--create-namespace", *sets,
    )  # fmt: skip
    yield Installed(namespace, workload, request.param)
    _helm(kube, "uninstall", RELEASE, "-n", namespace, check=False)


def test_the_operator_works_with_exactly_the_charts_permissions(
    kube: Kube, installed: Installed, tmp_path: Path
) -> None:
    release_ns, ns = installed.namespace, installed.workload
    account = f"system:serviceaccount:{release_ns}:trialsync-operator"
    groups = [
        "system:serviceaccounts",
        f"system:serviceaccounts:{release_ns}",
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
            *(["--watch-namespace", ns] if installed.watched else []),
        ],
        webhook_name="trialsync",
        install_webhooks=False,
        kubeconfig=as_operator,
        namespace=release_ns,
    )
    try:
        point_webhooks_at(kube, operator.webhook_port, name="trialsync")
        local = syncconfig("local", {})
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
        uid = json.loads(kube.kubectl("get", "syncconfig", "local", "-n", ns, "-o", "json").stdout)[
            "metadata"
        ]["uid"]
        kube.kubectl("get", "secret", names.head_secret_name("local", uid), "-n", ns)
        pod = opted_in_pod("worker", "local")
        kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
        assert (
            len(
                sidecars(
                    json.loads(kube.kubectl("get", "pod", "worker", "-n", ns, "-o", "json").stdout)
                )
            )
            == 1
        )
        # Whether a credentials Secret exists, it learns through a dry-run create that the
        # policies let through, and that writes nothing.
        keyed = syncconfig(
            "keyed",
            {"uploadDir": "s3://bucket/x", "credentials": {"secretRef": {"name": "absent"}}},
        )
        kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(keyed))
        wait_for(
            lambda: any(
                c["reason"] == "SecretMissing"
                for c in json.loads(
                    kube.kubectl("get", "syncconfig", "keyed", "-n", ns, "-o", "json").stdout
                )
                .get("status", {})
                .get("conditions", [])
            ),
            30,
            what="Ready=False, SecretMissing",
        )
        assert kube.kubectl("get", "secret", "absent", "-n", ns, check=False).returncode != 0
        kube.kubectl("get", "lease", "trialsync-operator", "-n", release_ns)
        kube.kubectl("get", "secret", "trialsync-webhook-tls", "-n", release_ns)
        config = json.loads(
            kube.kubectl("get", "mutatingwebhookconfiguration", "trialsync", "-o", "json").stdout
        )
        assert config["webhooks"][0]["clientConfig"]["caBundle"]
        # Nothing it tried was refused (a transient 429 of a new CRD's storage may be). A
        # namespace another test is still deleting refuses new objects with a 403 that is
        # not about permissions.
        refused = [
            line
            for line in operator.log().splitlines()
            if ("Forbidden" in line or "HTTP 403" in line) and "being terminated" not in line
        ]
        assert refused == []
    finally:
        operator.stop()

    # What the chart does not grant is refused.
    for verb, resource, where in [
        ("get", "secrets", ["-n", "default"]),
        ("list", "secrets", ["--all-namespaces"]),
        ("get", "pods", ["-n", "default"]),
        ("delete", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("update", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("get", "syncconfigs.trialsync.io", ["-n", "default"]),
        ("update", "mutatingwebhookconfigurations/other", []),
        ("create", "clusterrolebindings", []),
        ("get", "secrets/some-other-secret", ["-n", release_ns]),
        *(
            [
                ("list", "syncconfigs.trialsync.io", ["--all-namespaces"]),
                ("create", "secrets", ["-n", "default"]),
                ("patch", "services", ["-n", "default"]),
            ]
            if installed.watched
            else []
        ),
    ]:
        answer = kube.kubectl(
            "auth", "can-i", verb, resource, *where, f"--as={account}", check=False
        ).stdout.strip()
        assert answer == "no", f"the chart grants {verb} {resource} {where}"
