"""Smoke tests proving the test control plane is a real apiserver: schemas, storage,
admission webhooks and RBAC all behave as on a real cluster."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.control_plane import Kube
from tests.support.requirements import external_cluster_only
from tests.support.webhook import WebhookServer, json_patch, mutating_webhook_configuration

pytestmark = pytest.mark.k8s

GROUP = "smoke.trialsync.test"
CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: {{type: integer, minimum: 1}}
"""


def _pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    # The image is never pulled: there is no kubelet, the pod is only stored.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }


def test_crd_schema_is_enforced_on_custom_objects(kube: Kube, k8s_namespace: str) -> None:
    kube.kubectl("apply", "-f", "-", input=CRD)
    kube.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=30s")

    good = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "good"}}
    kube.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-", input=json.dumps({**good, "spec": {"replicas": 2}})
    )

    bad = {**good, "metadata": {"name": "bad"}, "spec": {"replicas": "three"}}
    refused = kube.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(bad), check=False
    )
    assert refused.returncode != 0
    assert "spec.replicas" in refused.stderr
    assert "must be of type integer" in refused.stderr

    below_minimum = {**good, "metadata": {"name": "zero"}, "spec": {"replicas": 0}}
    refused = kube.kubectl(
        "apply", "-n", k8s_namespace, "-f", "-", input=json.dumps(below_minimum), check=False
    )
    assert refused.returncode != 0
    assert "should be greater than or equal to 1" in refused.stderr

    names = kube.kubectl("get", "widgets", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert names == [f"widget.{GROUP}/good"]


def test_pod_created_through_the_api_is_read_back(kube: Kube, k8s_namespace: str) -> None:
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(name="reader", labels={"app": "smoke"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="main", image="registry.k8s.io/pause:3.10")]
            ),
        )
        core.create_namespaced_pod(k8s_namespace, body)
        pod = core.read_namespaced_pod("reader", k8s_namespace)

    assert pod.metadata is not None
    assert pod.spec is not None
    assert pod.metadata.labels == {"app": "smoke"}
    assert pod.spec.containers[0].image == "registry.k8s.io/pause:3.10"
    # The ServiceAccount admission plugin ran and filled in the default account.
    assert pod.spec.service_account_name == "default"
    listed = json.loads(kube.kubectl("get", "pods", "-n", k8s_namespace, "-o", "json").stdout)
    assert [p["metadata"]["name"] for p in listed["items"]] == ["reader"]


def test_mutating_webhook_is_called_and_its_label_lands_on_the_pod(kube: Kube) -> None:
    if not kube.local:
        external_cluster_only("its apiserver cannot reach a webhook on this host's 127.0.0.1")
    # The namespace label scopes the webhook to this test, so its failurePolicy=Fail
    # cannot break pods elsewhere if the server is gone.
    marker = uuid.uuid4().hex[:10]
    namespace = kube.create_namespace(f"hook-{marker}", labels={"trialsync-webhook-test": marker})

    def add_label(request: dict[str, Any]) -> dict[str, Any]:
        has_labels = bool(request["object"]["metadata"].get("labels"))
        op: dict[str, Any] = (
            {"op": "add", "path": "/metadata/labels/mutated-by", "value": "smoke-webhook"}
            if has_labels
            else {"op": "add", "path": "/metadata/labels", "value": {"mutated-by": "smoke-webhook"}}
        )
        return json_patch([op])

    with WebhookServer(add_label) as server:
        config = mutating_webhook_configuration(
            f"label-{marker}",
            url=server.url(),
            ca_bundle=server.tls.ca_bundle,
            namespace_selector={"matchLabels": {"trialsync-webhook-test": marker}},
        )
        kube.kubectl("apply", "-f", "-", input=json.dumps(config))
        try:
            kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_pod("labelled")))
        finally:
            kube.kubectl("delete", "mutatingwebhookconfiguration", f"label-{marker}")

    pod = json.loads(kube.kubectl("get", "pod", "labelled", "-n", namespace, "-o", "json").stdout)
    assert pod["metadata"]["labels"]["mutated-by"] == "smoke-webhook"
    assert [(r["operation"], r["kind"]["kind"], r["name"]) for r in server.requests] == [
        ("CREATE", "Pod", "labelled")
    ]


def test_rbac_denies_an_unprivileged_user_until_a_role_grants_access(
    kube: Kube, k8s_namespace: str
) -> None:
    user = f"smoke-user-{uuid.uuid4().hex[:6]}"
    # Impersonation works on any cluster, including TRIALSYNC_KUBECONFIG ones.
    denied = kube.kubectl("get", "pods", "-n", k8s_namespace, f"--as={user}", check=False)
    assert denied.returncode != 0
    assert f'User "{user}" cannot list resource "pods"' in denied.stderr
    assert (
        kube.kubectl(
            "auth", "can-i", "list", "pods", "-n", k8s_namespace, f"--as={user}", check=False
        ).stdout.strip()
        == "no"
    )

    kube.kubectl(
        "create", "role", "pod-reader", "-n", k8s_namespace, "--verb=get,list", "--resource=pods"
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "pod-reader",
        "-n",
        k8s_namespace,
        "--role=pod-reader",
        f"--user={user}",
    )
    allowed = kube.kubectl("get", "pods", "-n", k8s_namespace, f"--as={user}")
    assert allowed.returncode == 0
    # The grant is for this namespace only.
    elsewhere = kube.kubectl("get", "pods", "-n", "default", f"--as={user}", check=False)
    assert "Forbidden" in elsewhere.stderr


def test_client_certificate_user_is_authenticated_but_not_authorized(kube: Kube) -> None:
    if not kube.local:
        external_cluster_only("its client CA key is not available here")
    kubeconfig = kube.user_kubeconfig("smoke-cert-user", groups=["smoke-team"])
    with kube.api_client(kubeconfig) as api, pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).list_namespaced_pod("default")
    assert denied.value.status == 403
    message = json.loads(str(denied.value.body))["message"]
    assert 'User "smoke-cert-user" cannot list resource "pods"' in message


def test_helm_installs_a_chart_whose_objects_land_in_the_cluster(
    kube: Kube, k8s_namespace: str, tmp_path: Path
) -> None:
    if kube.helm_path is None and not kube.local:
        external_cluster_only("no helm in TRIALSYNC_TOOLS_BIN or PATH")
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )

    kube.helm("install", "smoke", str(chart), "-n", k8s_namespace, "--set", "greeting=hi")

    data = kube.kubectl(
        "get", "configmap", "smoke-config", "-n", k8s_namespace, "-o", "jsonpath={.data.greeting}"
    ).stdout
    assert data == "hi"
    assert "deployed" in kube.helm("status", "smoke", "-n", k8s_namespace).stdout
