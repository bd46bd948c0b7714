"""``trialsync inject`` and ``trialsync check-inject`` against the real webhook: the
operator as a process beside a real kube-apiserver injects pods, and the commands, reading
the same cluster, print the same patch and give the reason for each way a pod goes
without its sidecar."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from localcluster.control_plane import Kube
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    OPT_OUT_LABEL,
    Operator,
    operator,
    pod_admission_review,
)
from tests.support.pods import TEST_ALLOWED_IMAGES, opted_in_pod, sidecars, syncconfig
from tests.support.sidecar_process import wait_for
from trialsync_operator import names
from trialsync_operator.admission import patch
from trialsync_operator.offline import documents

pytestmark = pytest.mark.k8s
__all__ = ["operator"]  # the module-scoped fixture

TLS_SECRET = "trialsync-webhook-tls"
#: The projected ServiceAccount token volume the apiserver adds to every pod.
TOKEN = "kube-api-access-"
ALLOWED = [f"--allowed-sidecar-image={image}" for image in TEST_ALLOWED_IMAGES]


@pytest.fixture
def ns(kube: Kube, operator: Operator) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _trialsync(
    kube: Kube, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``trialsync`` command, reading the test cluster with the admin's kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "trialsync.cli", *args, "--kubeconfig", str(kube.kubeconfig)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _apply(kube: Kube, namespace: str, body: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def _get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        kube.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return found


def _config(kube: Kube, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Create a SyncConfig and wait for the operator's status of it."""
    created = _apply(kube, namespace, syncconfig(name, spec))
    assert created.returncode == 0, created.stderr
    wait_for(
        lambda: (_get(kube, namespace, "syncconfig", name).get("status") or {}).get("conditions"),
        30,
        what=f"a status of SyncConfig {name}",
    )
    return _get(kube, namespace, "syncconfig", name)


def _pod(name: str, config: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    pod = opted_in_pod(name, config, mount_path="/root/ray_results")
    pod["metadata"]["annotations"].update(annotations)
    return pod


def _webhook_ops(kube: Kube, operator: Operator, pod: Mapping[str, Any], namespace: str) -> Any:
    """The operator's webhook's own answer for ``pod``, called as the apiserver calls it."""
    secret = _get(kube, OPERATOR_NAMESPACE, "secret", TLS_SECRET)
    context = ssl.create_default_context(cadata=base64.b64decode(secret["data"]["ca.crt"]).decode())
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.webhook_port}/mutate-pods",
        data=json.dumps(pod_admission_review(dict(pod), namespace)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        answer = json.loads(response.read())["response"]
    assert answer["allowed"], answer
    assert answer["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(answer["patch"]))


def _contains(stored: Any, given: Any, where: str = "") -> None:
    """Everything in ``given`` is in ``stored`` as given: the apiserver adds its defaults
    (terminationMessagePath, a probe's scheme, a Secret volume's defaultMode...), never
    changes a value it was sent."""
    if isinstance(given, dict):
        assert isinstance(stored, dict), where
        for key, value in given.items():
            assert key in stored, f"{where}.{key} missing"
            _contains(stored[key], value, f"{where}.{key}")
    elif isinstance(given, list):
        assert isinstance(stored, list), where
        assert len(stored) == len(given), where
        for index, (a, b) in enumerate(zip(stored, given, strict=True)):
            _contains(a, b, f"{where}[{index}]")
    else:
        assert stored == given, where


def _without_token(container: Mapping[str, Any]) -> dict[str, Any]:
    """A stored container without the ServiceAccount token mount the apiserver adds to
    every container, the sidecar included (after the webhook)."""
    mounts = [m for m in container.get("volumeMounts", []) if not m["name"].startswith(TOKEN)]
    return {**container, "volumeMounts": mounts}


def _same_injection(stored_pod: Mapping[str, Any], injected: Mapping[str, Any]) -> None:
    """The pod the apiserver stored and the one ``inject`` printed have the same sidecar,
    the same volumes and mounts added, the same labels and status annotation."""
    stored_meta, meta = stored_pod["metadata"], injected["metadata"]
    for label in (names.CONFIG_LABEL, names.ROLE_LABEL):
        assert stored_meta["labels"][label] == meta["labels"][label]
    status = names.STATUS_ANNOTATION
    assert stored_meta["annotations"][status] == meta["annotations"][status]
    stored_spec, spec = stored_pod["spec"], injected["spec"]
    [stored_sidecar], [sidecar] = sidecars(stored_pod), sidecars(injected)
    assert stored_spec["initContainers"][-1]["name"] == names.SIDECAR_NAME
    _contains(_without_token(stored_sidecar), sidecar, "sidecar")
    ours = [v for v in stored_spec["volumes"] if not v["name"].startswith(TOKEN)]
    _contains(ours, spec["volumes"], "volumes")
    pairs = zip(stored_spec["containers"], spec["containers"], strict=True)
    for stored_container, container in pairs:
        stored_mounts = _without_token(stored_container)["volumeMounts"]
        assert stored_mounts == container.get("volumeMounts", [])


CASES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "upload-mount-path": (
        {
            "uploadDir": "s3://bucket/exp",
            "storage": {"endpoint": "http://s3.storage:8333"},
            "credentials": {"secretRef": {"name": "s3-credentials"}},
        },
        {},
    ),
    "head-node-head": ({"syncPeriod": 30}, {names.ROLE_ANNOTATION: "head"}),
    "head-node-worker": ({"syncPeriod": 30}, {}),
    "restore-with-a-key": (
        {"uploadDir": "gs://bucket/r", "restoreOnStart": True},
        {names.RESTORE_KEY_ANNOTATION: "ml/trial-7"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inject_prints_the_webhooks_patch_byte_for_byte_and_the_pod_the_apiserver_stores(
    kube: Kube, operator: Operator, ns: str, case: str, tmp_path: Path
) -> None:
    spec, annotations = CASES[case]
    _config(kube, ns, "exp", spec)
    pod = _pod("trainer", "exp", annotations)
    (tmp_path / "pod.json").write_text(json.dumps(pod))

    done = _trialsync(
        kube, "inject", "-f", str(tmp_path / "pod.json"), "-n", ns, "-o", "json", *ALLOWED
    )
    assert done.returncode == 0, done.stderr
    # The operator's own answer, applied to the same pod, printed the same way.
    webhook = patch.apply(pod, _webhook_ops(kube, operator, pod, ns))
    assert done.stdout == documents.dump([webhook], "json")
    yaml_out = _trialsync(kube, "inject", "-f", "-", "-n", ns, *ALLOWED, stdin=json.dumps(pod))
    assert yaml_out.stdout == documents.dump([webhook], "yaml")

    created = _apply(kube, ns, pod)
    assert created.returncode == 0, created.stderr
    _same_injection(_get(kube, ns, "pod", "trainer"), json.loads(done.stdout))


def test_inject_of_a_job_is_what_the_webhook_makes_of_the_pods_made_from_it(
    kube: Kube, operator: Operator, ns: str
) -> None:
    _config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp", "restoreOnStart": True})
    pod_spec = opted_in_pod("unused", "exp", mount_path="/results")
    template = {"metadata": {k: v for k, v in pod_spec["metadata"].items() if k != "name"}}
    template["spec"] = pod_spec["spec"]
    template["spec"]["restartPolicy"] = "Never"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sweep", "namespace": ns},
        "spec": {"completionMode": "Indexed", "completions": 2, "template": template},
    }
    assert _apply(kube, ns, job).returncode == 0
    stored_job = _get(kube, ns, "job", "sweep")  # the template with the apiserver's defaults

    done = _trialsync(kube, "inject", "-f", "-", "-o", "json", stdin=json.dumps(stored_job))
    assert done.returncode == 0, done.stderr
    assert (
        "each pod of an Indexed Job has its own completion index; shown for index 0" in done.stderr
    )
    injected = json.loads(done.stdout)["spec"]["template"]

    # The pod the Job controller makes of the template for index 0 (no controller runs
    # here: it is made the same way), through the apiserver and the real webhook.
    stored_template = stored_job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **stored_template["metadata"],
            "name": "sweep-0-abcde",
            "labels": {
                **stored_template["metadata"]["labels"],
                "batch.kubernetes.io/job-name": "sweep",
                "job-name": "sweep",
                "batch.kubernetes.io/job-completion-index": "0",
            },
            "annotations": {
                **stored_template["metadata"]["annotations"],
                "batch.kubernetes.io/job-completion-index": "0",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "sweep",
                    "uid": stored_job["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": stored_template["spec"],
    }
    webhook = patch.apply(pod, _webhook_ops(kube, operator, pod, ns))
    assert webhook["spec"] == injected["spec"]
    env = {e["name"]: e.get("value") for e in sidecars(injected)[0]["env"]}
    assert env["TRIALSYNC_RESTORE_KEY"] == f"{ns}/job/sweep/0"
    assert _apply(kube, ns, pod).returncode == 0
    _same_injection(_get(kube, ns, "pod", "sweep-0-abcde"), injected)


# check-inject, each reason, live.


def _check(kube: Kube, *args: str, stdin: str | None = None) -> tuple[int, list[str]]:
    done = _trialsync(kube, "check-inject", *args, stdin=stdin)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout.splitlines()


def _line(lines: list[str], check: str) -> str:
    found = [line for line in lines if line.split(":", 1)[0].split(maxsplit=1)[-1] == check]
    assert len(found) == 1, (check, lines)
    return found[0]


def test_check_inject_of_an_injected_pod_says_so(kube: Kube, ns: str) -> None:
    _config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    assert _apply(kube, ns, opted_in_pod("trainer", "exp")).returncode == 0
    code, lines = _check(kube, "trainer", "-n", ns)
    assert code == 0
    assert lines[-1] == "verdict: injected"
    assert _line(lines, "sidecar").startswith(
        "ok      sidecar: the pod has trialsync-sidecar (from SyncConfig exp"
    )
    assert _line(lines, "webhook").startswith(
        "ok      webhook: MutatingWebhookConfiguration trialsync-test calls https://127.0.0.1:"
    )


def test_check_inject_of_a_pod_without_the_label_fails_the_opt_in(kube: Kube, ns: str) -> None:
    _config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    assert _apply(kube, ns, opted_in_pod("plain", "exp", labelled=False)).returncode == 0
    code, lines = _check(kube, "plain", "-n", ns)
    assert code == 1
    assert _line(lines, "opt-in label").startswith(
        "FAIL    opt-in label: the webhook's objectSelector asks for trialsync.io/inject=true"
    )
    assert lines[-1].startswith("verdict: not injected: opt-in label:")


def test_check_inject_names_a_namespace_the_webhook_leaves_out(kube: Kube, ns: str) -> None:
    opted_out = kube.create_namespace(
        f"t-{uuid.uuid4().hex[:10]}", labels={OPT_OUT_LABEL: "disabled"}
    )
    try:
        _config(kube, opted_out, "exp", {"uploadDir": "s3://bucket/exp"})
        assert _apply(kube, opted_out, opted_in_pod("trainer", "exp")).returncode == 0
        assert sidecars(_get(kube, opted_out, "pod", "trainer")) == []
        code, lines = _check(kube, "trainer", "-n", opted_out)
        assert code == 1
        assert _line(lines, "namespace") == (
            f"FAIL    namespace: namespace {opted_out} is labelled trialsync.io/injection=disabled"
        )
    finally:
        kube.kubectl("delete", "namespace", opted_out, "--wait=false", check=False)
    # A file's pod in a namespace the configuration excludes by name.
    code, lines = _check(
        kube, "-f", "-", "-n", OPERATOR_NAMESPACE, stdin=json.dumps(opted_in_pod("p", "exp"))
    )
    assert code == 1
    assert _line(lines, "namespace").startswith(
        f"FAIL    namespace: namespace {OPERATOR_NAMESPACE} is one the webhook leaves out"
    )


def test_check_inject_of_a_file_reads_the_syncconfig_from_the_cluster(kube: Kube, ns: str) -> None:
    pod = json.dumps(opted_in_pod("p", "exp"))
    code, lines = _check(kube, "-f", "-", "-n", ns, stdin=pod)
    assert code == 1
    assert _line(lines, "SyncConfig") == (
        f"FAIL    SyncConfig: {ns}/exp does not exist (in the cluster) (the pod is refused)"
    )
    _config(
        kube,
        ns,
        "exp",
        {"uploadDir": "s3://bucket/exp", "credentials": {"secretRef": {"name": "none-yet"}}},
    )
    code, lines = _check(kube, "-f", "-", "-n", ns, stdin=pod)
    assert code == 0
    assert lines[-1] == "verdict: would be injected"
    # Valid, but not Ready: the reason from the SyncConfig's status.
    assert _line(lines, "SyncConfig").startswith(
        f"warn    SyncConfig: {ns}/exp is valid, Ready=False (SecretMissing)"
    )
    # Invalid to an operator whose image serves no s3:// (its settings, given as flags).
    code, lines = _check(kube, "-f", "-", "-n", ns, "--sidecar-schemes=gs", stdin=pod)
    assert code == 1
    assert _line(lines, "SyncConfig").startswith(
        f"FAIL    SyncConfig: {ns}/exp is invalid (SchemeNotServed)"
    )


def test_check_inject_of_a_pod_admitted_with_syncing_disabled(kube: Kube, ns: str) -> None:
    _config(kube, ns, "off", {"syncer": "none"})
    created = _apply(kube, ns, opted_in_pod("trainer", "off"))
    assert created.returncode == 0
    assert "disables syncing" in created.stderr  # the webhook's warning
    code, lines = _check(kube, "trainer", "-n", ns)
    assert code == 1
    assert (
        _line(lines, "syncing")
        == f"FAIL    syncing: SyncConfig {ns}/off disables syncing (syncer: none, no uploadDir)"
    )


def test_check_inject_of_a_pod_the_webhook_refuses_for_its_annotations(kube: Kube, ns: str) -> None:
    _config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    pod = _pod("trainer", "exp", {names.VOLUME_ANNOTATION: "nope"})
    refused = _apply(kube, ns, pod)
    assert refused.returncode != 0
    code, lines = _check(kube, "-f", "-", "-n", ns, stdin=json.dumps(pod))
    assert code == 1
    detail = _line(lines, "pod annotations")
    assert detail.startswith(
        "FAIL    pod annotations: annotations trialsync.io/volume and trialsync.io/mount-path "
        "conflict"
    )
    assert detail.endswith("(the pod is refused)")
    assert detail.split(": ", 1)[1].split(" (the pod")[0] in refused.stderr


def test_check_inject_of_a_missing_pod_is_a_usage_error(kube: Kube, ns: str) -> None:
    done = _trialsync(kube, "check-inject", "nope", "-n", ns)
    assert done.returncode == 2
    assert f"pod {ns}/nope does not exist" in done.stderr


# The operator down under failurePolicy Ignore: another configuration, whose Service has no
# endpoint, serves one namespace (the test operator's configuration leaves it out).

DOWN_SERVICE = "trialsync-down-webhook"


@pytest.fixture
def down(kube: Kube, operator: Operator) -> Iterator[str]:
    """A namespace served by a pods webhook with failurePolicy Ignore whose operator is
    down: its Service selects an operator pod that never runs."""
    namespace = kube.create_namespace(
        f"t-{uuid.uuid4().hex[:10]}",
        labels={OPT_OUT_LABEL: "disabled", "trialsync-test/down": "yes"},
    )
    name = f"trialsync-down-{namespace}"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": DOWN_SERVICE, "namespace": OPERATOR_NAMESPACE},
        "spec": {
            "selector": {"app": "trialsync-down"},
            "ports": [{"port": 443, "targetPort": 9443}],
        },
    }
    operator_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "trialsync-down-operator",
            "namespace": OPERATOR_NAMESPACE,
            "labels": {"app": "trialsync-down"},
        },
        "spec": {
            "containers": [
                {
                    "name": "operator",
                    "image": "docker.io/trialsync/operator:0.1.0",
                    "args": [
                        "--namespace=$(POD_NAMESPACE)",
                        "--sidecar-image=registry.example.com/trialsync-custom:2",
                        "--sidecar-resources="
                        + json.dumps(
                            {
                                "requests": {"cpu": "200m", "memory": "300Mi"},
                                "limits": {"cpu": "2", "memory": "600Mi"},
                            }
                        ),
                    ],
                    "env": [
                        {
                            "name": "POD_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {"name": "TRIALSYNC_OPERATOR_ON_CONFIG_ERROR", "value": "admit"},
                    ],
                }
            ]
        },
    }
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": names.POD_WEBHOOK,
                "clientConfig": {
                    "service": {
                        "name": DOWN_SERVICE,
                        "namespace": OPERATOR_NAMESPACE,
                        "path": "/mutate-pods",
                        "port": 443,
                    }
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "objectSelector": {"matchLabels": {names.INJECT_LABEL: "true"}},
                "namespaceSelector": {"matchLabels": {"trialsync-test/down": "yes"}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 2,
            }
        ],
    }
    for body in (service, operator_pod, configuration):
        kube.kubectl("apply", "-f", "-", input=json.dumps(body))
    try:
        yield namespace
    finally:
        kube.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        kube.kubectl(
            "delete",
            "pod,service,endpointslice",
            "-n",
            OPERATOR_NAMESPACE,
            "-l",
            "trialsync-test=down",
            check=False,
        )
        kube.kubectl(
            "delete", "service", DOWN_SERVICE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found"
        )
        kube.kubectl(
            "delete",
            "pod",
            "trialsync-down-operator",
            "-n",
            OPERATOR_NAMESPACE,
            "--ignore-not-found",
            "--wait=false",
        )
        kube.kubectl(
            "delete",
            "endpointslice",
            "trialsync-down",
            "-n",
            OPERATOR_NAMESPACE,
            "--ignore-not-found",
        )
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_check_inject_says_the_operator_is_down_under_failure_policy_ignore(
    kube: Kube, down: str
) -> None:
    _config(kube, down, "exp", {"uploadDir": "s3://bucket/exp"})
    created = _apply(kube, down, opted_in_pod("trainer", "exp"))
    assert created.returncode == 0, created.stderr
    assert sidecars(_get(kube, down, "pod", "trainer")) == []  # admitted without its sidecar

    code, lines = _check(kube, "trainer", "-n", down)
    assert code == 1
    assert _line(lines, "webhook") == (
        f"ok      webhook: MutatingWebhookConfiguration trialsync-down-{down} calls Service "
        f"{OPERATOR_NAMESPACE}/{DOWN_SERVICE} (failurePolicy Ignore)"
    )
    assert _line(lines, "operator settings") == (
        "ok      operator settings: the arguments of operator pod "
        f"{OPERATOR_NAMESPACE}/trialsync-down-operator"
    )
    assert _line(lines, "sidecar").startswith(
        "FAIL    sidecar: the pod has no trialsync-sidecar, though the webhook would inject it now"
    )
    assert _line(lines, "failurePolicy") == (
        f"FAIL    failurePolicy: Ignore, and Service {OPERATOR_NAMESPACE}/{DOWN_SERVICE} has no "
        "ready endpoint: the operator is down, and pods are admitted without their sidecar"
    )

    # The operator back (a ready endpoint): the pod was admitted while it was down.
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "trialsync-down",
            "namespace": OPERATOR_NAMESPACE,
            "labels": {"kubernetes.io/service-name": DOWN_SERVICE},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}],
        "ports": [{"port": 9443, "protocol": "TCP"}],
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(endpoints))
    code, lines = _check(kube, "trainer", "-n", down)
    assert code == 1
    assert "has 1 ready endpoint(s) now" in _line(lines, "failurePolicy")
    assert not [line for line in lines if "missed injection:" in line]

    # The Event the operator records on such a pod: check-inject points to it.
    pod = _get(kube, down, "pod", "trainer")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "trainer.missed", "namespace": down},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "trainer",
            "namespace": down,
            "uid": pod["metadata"]["uid"],
        },
        "reason": names.MISSED_INJECTION_REASON,
        "message": "pod opted in to trialsync but runs without the sync sidecar",
        "type": "Warning",
        "firstTimestamp": "2026-12-01T10:00:00Z",
        "lastTimestamp": "2026-12-01T10:00:00Z",
        "count": 1,
        "source": {"component": "trialsync-operator"},
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(event))
    code, lines = _check(kube, "trainer", "-n", down)
    assert code == 1
    assert _line(lines, "missed injection").startswith(
        "info    missed injection: the operator recorded Event MissedInjection on this pod at "
        "2026-12-01T10:00:00Z (kubectl describe pod): a running pod cannot be given the "
        "sidecar; delete it"
    )


def test_inject_and_check_inject_use_the_settings_of_the_operator_pod(
    kube: Kube, down: str
) -> None:
    _config(kube, down, "exp", {"uploadDir": "s3://bucket/exp"})
    pod = json.dumps(opted_in_pod("trainer", "exp"))
    done = _trialsync(kube, "inject", "-f", "-", "-n", down, "-o", "json", stdin=pod)
    assert done.returncode == 0, done.stderr
    [sidecar] = sidecars(json.loads(done.stdout))
    assert sidecar["image"] == "registry.example.com/trialsync-custom:2"
    assert sidecar["resources"] == {
        "requests": {"cpu": "200m", "memory": "300Mi"},
        "limits": {"cpu": "2", "memory": "600Mi"},
    }
    # Its TRIALSYNC_OPERATOR_ON_CONFIG_ERROR=admit too: a missing SyncConfig is admitted.
    code, lines = _check(kube, "-f", "-", "-n", down, stdin=json.dumps(opted_in_pod("p", "nope")))
    assert code == 1
    assert _line(lines, "SyncConfig").endswith("(admitted without it: --on-config-error admit)")


def test_check_inject_by_a_user_who_may_read_only_their_namespace(kube: Kube, ns: str) -> None:
    """Webhook configurations and namespaces are cluster-wide: a user who may not read
    them still gets the checks, against the chart's defaults, saying so."""
    _config(kube, ns, "exp", {"uploadDir": "s3://bucket/exp"})
    assert _apply(kube, ns, opted_in_pod("trainer", "exp")).returncode == 0
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "reader", "namespace": ns},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [names.GROUP], "resources": [names.PLURAL], "verbs": ["list"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }
    for body in (role, binding):
        assert _apply(kube, ns, body).returncode == 0
    alice = kube.user_kubeconfig("alice")
    done = subprocess.run(
        [sys.executable, "-m", "trialsync.cli", "check-inject", "trainer", "-n", ns],
        env={**os.environ, "KUBECONFIG": str(alice)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "the webhook configurations cannot be read" in _line(lines, "operator settings")
    assert "HTTP 403" in _line(lines, "operator settings")
    assert lines[-1] == "verdict: injected"
