"""The Helm chart: lint, schemas, the generated CRD copy, and RBAC that is exactly enough.

The RBAC test installs the chart into the test control plane and runs the operator as the
chart's ServiceAccount (a client certificate with its user name and groups), with the
chart's webhook configurations pointed at it: the whole flow must pass with those
permissions, and what the chart does not grant must be refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.control_plane import REPO_ROOT, Kube
from tests.support.monitoring import ALERTS, DASHBOARD, tool
from tests.support.operator_process import CRD_PATH, point_webhooks_at, start_operator
from tests.support.pods import DEFAULTS, lookup_for, opted_in_pod, sidecars, syncconfig
from tests.support.requirements import external_cluster_only, unavailable
from tests.support.sidecar_process import wait_for
from trialsync import contract
from trialsync_operator import names
from trialsync_operator.admission import injection

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


def test_the_projects_helm_knows_the_kubernetes_it_was_built_with(
    kube: Kube, tmp_path: Path
) -> None:
    """As a released helm does: without --kube-version, `helm template` assumes the
    Kubernetes of helm's client-go (1.37 here), not v1.20, which the chart refuses."""
    rendered = _helm(kube, "template", RELEASE, str(CHART), check=False)
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: MutatingWebhookConfiguration" in rendered.stdout
    probe = tmp_path / "probe"
    (probe / "templates").mkdir(parents=True)
    (probe / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (probe / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        'data: {kube: "{{ .Capabilities.KubeVersion.Version }}"}\n'
    )
    (document,) = yaml.safe_load_all(_helm(kube, "template", "probe", str(probe)).stdout)
    assert document["data"]["kube"] == "v1.37.0"


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
    # Listed: its own MissedInjection Events, once when it takes the lead.
    assert _grants(cluster_wide, "events") == {"create", "list"}
    assert _grants(cluster_wide, "services") == {"get", "create", "patch", "delete"}
    # Listed and watched by label: the opted-in pods, for missed injections and the pods'
    # sync status; and to know when the last pod using a head-node service is gone.
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
        assert _grants(rules, "pods") == {"list", "watch"}
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
        ("monitoring.prometheusRule.dataLossWindowSeconds=0", "dataLossWindowSeconds"),
        ("monitoring.podMonitor.interval=soon", "interval"),
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


MONITORING = (
    "monitoring.dashboard.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.serviceMonitor.labels.release=kube-prometheus",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.prometheusRule.dataLossWindowSeconds=900",
)
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_monitoring_is_off_by_default(kube: Kube) -> None:
    docs = _render(kube)
    assert not MONITORING_KINDS & {d["kind"] for d in docs}
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


def test_the_monitoring_objects_scrape_the_operator_and_every_injected_sidecar(
    kube: Kube, tmp_path: Path
) -> None:
    namespace = kube.create_namespace(f"chart-{uuid.uuid4().hex[:8]}")
    watched = kube.create_namespace(f"ml-{uuid.uuid4().hex[:8]}")  # the chart's Roles go there
    docs = _render(
        kube, *MONITORING, f"operator.watchNamespaces={{{watched}}}", namespace=namespace
    )
    by_kind = {d["kind"]: d for d in docs if d["kind"] in MONITORING_KINDS | {"ConfigMap"}}
    assert set(by_kind) == MONITORING_KINDS | {"ConfigMap"}
    # The dashboard, for Grafana's sidecar to find by its label.
    dashboard = by_kind["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["trialsync.json"]) == json.loads(DASHBOARD.read_text())
    # The sidecars: the label and the port name the webhook gives every injected pod.
    pod = opted_in_pod("p", "exp")
    config = syncconfig("exp", {"uploadDir": "s3://bucket/x"})
    config["metadata"].update(namespace=watched, uid="u", generation=1)
    injected = injection.plan(pod, watched, lookup_for(config), DEFAULTS).patch
    assert injected is not None
    [sidecar] = [c for c in injected["initContainers"] if c["name"] == names.SIDECAR_NAME]
    ports = {p["containerPort"]: p["name"] for p in sidecar["ports"]}
    monitor = by_kind["PodMonitor"]["spec"]
    assert monitor["podMetricsEndpoints"][0]["port"] == ports[contract.HTTP_PORT]
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"
    [selects] = monitor["selector"]["matchExpressions"]
    assert selects == {"key": names.CONFIG_LABEL, "operator": "Exists"}
    assert names.CONFIG_LABEL in injected["labels"]
    assert monitor["namespaceSelector"] == {"matchNames": [watched]}
    # The operator: the metrics Service, whose port leads to the health port (/metrics).
    service_monitor = by_kind["ServiceMonitor"]
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    [service] = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")
    ]
    wanted = service_monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    # A ServiceMonitor names the Service's port; the Service's port targets the container's.
    [service_port] = service["spec"]["ports"]
    assert service_monitor["spec"]["endpoints"][0]["port"] == service_port["name"]
    assert service_port["targetPort"] == "health"
    assert "health" in port_names
    # The alerts: the file's, with the threshold from the values; promtool takes them.
    rules = by_kind["PrometheusRule"]["spec"]
    expected = ALERTS.read_text().replace(
        "trialsync_data_loss_window_seconds > 3600", "trialsync_data_loss_window_seconds > 900"
    )
    assert rules == {"groups": yaml.safe_load(expected)["groups"]}
    rendered = tmp_path / "rules.yaml"
    rendered.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [str(tool("promtool")), "check", "rules", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every object against the apiserver's schemas, the prometheus-operator's CRDs
    # included, strictly.
    _install_prometheus_operator_crds(kube)
    validated = kube.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input="\n---\n".join(yaml.safe_dump(d) for d in docs),
        check=False,
    )
    assert validated.returncode == 0, validated.stderr


def _install_prometheus_operator_crds(kube: Kube) -> None:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRDs tools/build.sh fetched, unless
    the cluster has them already (an external one's are left alone)."""
    crds = tool("promtool").parent / "prometheus-operator-crds"
    if not crds.is_dir():
        unavailable(f"no {crds}: run `bash tools/build.sh`")
    for path in sorted(crds.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        if kube.kubectl("get", "crd", name, check=False).returncode != 0:
            kube.kubectl("create", "-f", str(path))
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


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
        # The search for missed injections works with these permissions too: it lists the
        # opted-in pods and the SyncConfigs, writes its condition, and reads its Events.
        missed = wait_for(
            lambda: next(
                (
                    c
                    for c in json.loads(
                        kube.kubectl("get", "syncconfig", "local", "-n", ns, "-o", "json").stdout
                    )["status"].get("conditions", [])
                    if c["type"] == "MissedInjections"
                ),
                None,
            ),
            40,
            what="the MissedInjections condition",
        )
        assert (missed["status"], missed["reason"]) == ("False", "AllInjected")
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.health_port}/metrics", timeout=5
        ) as response:
            scraped = response.read().decode()
        ok = re.search(
            r'^trialsync_operator_missed_injection_scans_total\{result="ok"\} (\S+)$',
            scraped,
            re.MULTILINE,
        )
        assert ok is not None, "no count of successful scans"
        assert float(ok.group(1)) >= 1
        log = operator.log()
        assert "cannot read the MissedInjection Events" not in log
        # A scan may meet the apiserver still warming the new CRD's storage (429), and is
        # retried; none may be refused (403).
        failed_scans = [line for line in log.splitlines() if "scan for missed" in line]
        assert not [line for line in failed_scans if "HTTP 403" in line], failed_scans
        assert not [
            line
            for line in log.splitlines()
            if "pods" in line and ("403" in line or "orbidden" in line)
        ]
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
