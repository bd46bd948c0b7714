"""The operator as a real process beside the real apiserver: both webhooks called over TLS,
injection as the pure function says, reconciliation, Events, and the head-node objects."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster.control_plane import Kube
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    OPT_OUT_LABEL,
    WEBHOOK_NAME,
    Operator,
    operator,
)
from tests.support.pods import DEFAULTS, SIDECAR, apply, opted_in_pod, sidecars, syncconfig
from tests.support.sidecar_process import wait_for
from trialsync import SyncConfig, contract
from trialsync_operator import names
from trialsync_operator.admission import injection
from trialsync_operator.reconcile import in_use
from trialsync_operator.reconcile.controller import RECHECK_INTERVAL
from trialsync_operator.syncconfig import view_of

pytestmark = pytest.mark.k8s
__all__ = ["operator"]  # the module-scoped fixture


def _pod(name: str, config: str, labelled: bool = True, **annotations: str) -> dict[str, Any]:
    return opted_in_pod(
        name, config, labelled=labelled, mount_path="/root/ray_results", **annotations
    )


def _apply(kube: Kube, namespace: str, body: dict[str, Any]) -> Any:
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def _get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = kube.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _ready(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    status = _get(kube, namespace, "syncconfig", name).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition["type"] == "Ready":
            return dict(condition)
    return None


@pytest.fixture
def ns(kube: Kube, operator: Operator) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create_namespace(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_operator_fills_in_the_ca_bundles_of_both_webhook_configurations(
    kube: Kube, operator: Operator
) -> None:
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        config = json.loads(kube.kubectl("get", kind, WEBHOOK_NAME, "-o", "json").stdout)
        bundle = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
        assert b"BEGIN CERTIFICATE" in bundle


def test_an_opted_in_pod_gets_exactly_what_the_injection_function_says(kube: Kube, ns: str) -> None:
    spec = {"uploadDir": "s3://bucket/exp", "storage": {"endpoint": "http://s3.storage:8333"}}
    assert _apply(kube, ns, syncconfig("exp", spec)).returncode == 0
    wait_for(lambda: (_ready(kube, ns, "exp") or {}).get("status") == "True", 30, what="Ready")
    created = _apply(kube, ns, _pod("trainer", "exp"))
    assert created.returncode == 0, created.stderr

    stored = _get(kube, ns, "pod", "trainer")
    config = _get(kube, ns, "syncconfig", "exp")
    expected = apply(
        _pod("trainer", "exp"),
        injection.plan(
            _pod("trainer", "exp"), ns, lambda n, m: view_of(config, SIDECAR), DEFAULTS
        ).patch,
    )
    [sidecar] = sidecars(stored)
    [want] = sidecars(expected)
    assert stored["spec"]["initContainers"][-1]["name"] == names.SIDECAR_NAME
    for field in ("image", "args", "env", "ports", "resources", "securityContext", "restartPolicy"):
        assert sidecar[field] == want[field], field
    for probe in ("startupProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["path"] == want[probe]["httpGet"]["path"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts["trialsync-trial"] == contract.TRIAL_MOUNT  # its own path: /root is 0700
    assert mounts["trialsync-tmp"] == "/tmp"
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["TRIALSYNC_UPLOAD_DIR"] == "s3://bucket/exp"
    assert json.loads(env["TRIALSYNC_STORAGE_OPTIONS"]) == {
        "endpoint_url": "http://s3.storage:8333"
    }
    trainer = stored["spec"]["containers"][0]
    assert {"name": "trialsync-trial", "mountPath": "/root/ray_results"} in trainer["volumeMounts"]
    status = json.loads(stored["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert (status["config"], status["generation"]) == ("exp", config["metadata"]["generation"])
    assert stored["metadata"]["labels"][names.CONFIG_LABEL] == "exp"


def test_the_same_spec_twice_or_an_injected_spec_gives_one_sidecar(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("exp", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    wait_for(lambda: _ready(kube, ns, "exp"), 30, what="a status")
    for name in ("first", "second"):
        assert _apply(kube, ns, _pod(name, "exp")).returncode == 0
        assert len(sidecars(_get(kube, ns, "pod", name))) == 1
    # A spec copied from an injected pod (a pod "cloned" by a user or a tool).
    injected = _get(kube, ns, "pod", "first")
    copy = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "copy",
            "labels": injected["metadata"]["labels"],
            "annotations": injected["metadata"]["annotations"],
        },
        "spec": {k: injected["spec"][k] for k in ("containers", "initContainers", "volumes")},
    }
    for container in copy["spec"]["containers"] + copy["spec"]["initContainers"]:
        container["volumeMounts"] = [
            m for m in container.get("volumeMounts", []) if not m["name"].startswith("kube-api")
        ]
    copy["spec"]["volumes"] = [
        v for v in copy["spec"]["volumes"] if not v["name"].startswith("kube-api")
    ]
    assert _apply(kube, ns, copy).returncode == 0
    assert len(sidecars(_get(kube, ns, "pod", "copy"))) == 1


def test_a_pod_created_without_a_namespace_in_its_body_is_injected(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("exp", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    wait_for(lambda: _ready(kube, ns, "exp"), 30, what="a status")
    body = _pod("", "exp")
    body["metadata"].pop("name")
    body["metadata"]["generateName"] = "trial-"
    with kube.api_client() as api:
        # As a controller does: the namespace only in the URL, a generated name.
        created = client.CoreV1Api(api).create_namespaced_pod(ns, body)
    assert created.metadata is not None
    assert len(sidecars(_get(kube, ns, "pod", str(created.metadata.name)))) == 1


def test_pods_without_the_label_or_in_excluded_namespaces_are_untouched(
    kube: Kube, ns: str, operator: Operator
) -> None:
    assert _apply(kube, ns, syncconfig("exp", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    assert _apply(kube, ns, _pod("unlabelled", "exp", labelled=False)).returncode == 0
    assert not sidecars(_get(kube, ns, "pod", "unlabelled"))
    assert (
        "trialsync.io/status" not in _get(kube, ns, "pod", "unlabelled")["metadata"]["annotations"]
    )

    opted_out = kube.create_namespace(
        f"out-{uuid.uuid4().hex[:8]}", labels={OPT_OUT_LABEL: "disabled"}
    )
    # Even naming a SyncConfig that does not exist there: the webhook is never called.
    assert _apply(kube, opted_out, _pod("skipped", "missing")).returncode == 0
    assert not sidecars(_get(kube, opted_out, "pod", "skipped"))
    assert _apply(kube, OPERATOR_NAMESPACE, _pod("own", "missing")).returncode == 0
    assert not sidecars(_get(kube, OPERATOR_NAMESPACE, "pod", "own"))
    kube.kubectl("delete", "pod", "own", "-n", OPERATOR_NAMESPACE, "--wait=false")


def test_a_pod_naming_a_missing_syncconfig_is_refused_naming_it(kube: Kube, ns: str) -> None:
    refused = _apply(kube, ns, _pod("orphan", "nosuch"))
    assert refused.returncode != 0
    assert (
        f"SyncConfig {ns}/nosuch (annotation trialsync.io/config) does not exist" in refused.stderr
    )


def test_the_validating_webhook_refuses_what_validate_upload_dir_refuses_with_its_message(
    kube: Kube, ns: str
) -> None:
    config = syncconfig("azure", {"uploadDir": "abfs://container/exp"})
    refused = _apply(kube, ns, config)
    assert refused.returncode != 0
    expected = view_of({**config, "metadata": {"name": "azure", "namespace": ns}}, SIDECAR).message
    assert "needs adlfs" in expected
    assert expected in refused.stderr
    # gs:// is served by the sidecar image even though no gcsfs is beside the operator.
    assert _apply(kube, ns, syncconfig("gcs", {"uploadDir": "gs://bucket/exp"})).returncode == 0


@pytest.mark.parametrize("upload_dir", ["s3://B/x", "file://relative/x", "gs://bucket//x"])
def test_what_only_the_webhook_checks_is_refused_with_validate_upload_dirs_message(
    kube: Kube, ns: str, upload_dir: str
) -> None:
    try:
        SyncConfig(upload_dir=upload_dir).validate_upload_dir()
    except ValueError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"validate_upload_dir accepts {upload_dir}")
    refused = _apply(kube, ns, syncconfig("bad", {"uploadDir": upload_dir}))
    assert refused.returncode != 0
    assert message in refused.stderr


def test_status_conditions_and_events_follow_validity(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("flip", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    wait_for(lambda: (_ready(kube, ns, "flip") or {}).get("reason") == "Valid", 30, what="Valid")
    # An invalid spec can reach the cluster past the webhook only while it is away (or
    # with failurePolicy Ignore): simulate that.
    validating = kube.kubectl(
        "get", "validatingwebhookconfiguration", WEBHOOK_NAME, "-o", "json"
    ).stdout
    kube.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_NAME)
    try:
        patch = json.dumps({"spec": {"uploadDir": "abfs://container/exp"}})
        kube.kubectl("patch", "syncconfig", "flip", "-n", ns, "--type=merge", "-p", patch)
    finally:
        restored = json.loads(validating)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            restored["metadata"].pop(key, None)
        kube.kubectl("create", "-f", "-", input=json.dumps(restored))
    condition = wait_for(
        lambda: (c := _ready(kube, ns, "flip")) and c["status"] == "False" and c,
        30,
        what="Ready=False",
    )
    assert condition["reason"] == "SchemeNotServed"
    assert "cannot serve abfs://" in condition["message"]
    status = _get(kube, ns, "syncconfig", "flip")["status"]
    assert status["observedGeneration"] == 2
    assert condition["observedGeneration"] == 2

    kube.kubectl(
        "patch",
        "syncconfig",
        "flip",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"uploadDir": "s3://bucket/again"}}),
    )
    wait_for(
        lambda: (_ready(kube, ns, "flip") or {}).get("status") == "True", 30, what="Ready again"
    )

    def events() -> list[dict[str, Any]]:
        items = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        return [e for e in items if e["involvedObject"]["name"] == "flip"]

    got = wait_for(lambda: len(events()) >= 3 and events(), 15, what="three Events")
    # One Event per change of validity: created valid, turned invalid, valid again.
    assert Counter(f"{e['type']}/{e['reason']}" for e in got) == {
        "Normal/Valid": 2,
        "Warning/SchemeNotServed": 1,
    }
    [warning] = [e for e in got if e["type"] == "Warning"]
    assert "cannot serve abfs://" in warning["message"]
    assert warning["involvedObject"]["kind"] == "SyncConfig"
    # A pod naming it while invalid would have been refused; now it is injected again.
    assert _apply(kube, ns, _pod("after", "flip")).returncode == 0


def test_a_pod_naming_an_invalid_syncconfig_is_refused_with_the_reason(kube: Kube, ns: str) -> None:
    validating = kube.kubectl(
        "get", "validatingwebhookconfiguration", WEBHOOK_NAME, "-o", "json"
    ).stdout
    kube.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_NAME)
    try:
        assert (
            _apply(kube, ns, syncconfig("bad", {"uploadDir": "abfs://container/x"})).returncode == 0
        )
    finally:
        restored = json.loads(validating)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            restored["metadata"].pop(key, None)
        kube.kubectl("create", "-f", "-", input=json.dumps(restored))
    wait_for(lambda: _ready(kube, ns, "bad"), 30, what="a status")
    refused = _apply(kube, ns, _pod("victim", "bad"))
    assert refused.returncode != 0
    assert f"SyncConfig {ns}/bad is invalid: upload_dir" in refused.stderr


def head_secret_of(pod: dict[str, Any]) -> tuple[str, list[str]]:
    """The head-node Secret a pod's sidecar mounts, and the keys it mounts of it."""
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == names.HEAD_SECRET_VOLUME]
    return volume["secret"]["secretName"], [i["key"] for i in volume["secret"]["items"]]


def test_without_an_upload_dir_the_operator_owns_a_token_secret_and_a_head_service(
    kube: Kube, ns: str
) -> None:
    assert _apply(kube, ns, syncconfig("local", {"syncPeriod": 30})).returncode == 0
    config = _get(kube, ns, "syncconfig", "local")
    service_name = names.head_service_name("local")
    secret_name = names.head_secret_name("local", config["metadata"]["uid"])
    service = wait_for(
        lambda: (
            kube.kubectl("get", "service", service_name, "-n", ns, "-o", "json", check=False).stdout
        ),
        30,
        what="the head Service",
    )
    secret = json.loads(kube.kubectl("get", "secret", secret_name, "-n", ns, "-o", "json").stdout)
    for obj in (json.loads(service), secret):
        [owner] = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "SyncConfig",
            "local",
            config["metadata"]["uid"],
        )
        assert owner["controller"] is True
    assert json.loads(service)["spec"]["selector"] == {
        names.CONFIG_LABEL: "local",
        names.ROLE_LABEL: "head",
    }
    assert len(base64.b64decode(secret["data"][names.HEAD_TOKEN_KEY])) >= 32
    # The head's TLS identity beside the token, in a Secret of the operator's own type.
    assert secret["type"] == names.HEAD_SECRET_TYPE
    assert set(secret["data"]) == {"token", "tls.crt", "tls.key", "ca.crt"}
    wait_for(
        lambda: (
            _get(kube, ns, "syncconfig", "local").get("status", {}).get("headService")
            == service_name
        ),
        30,
        what="status.headService",
    )

    # A head pod gets the label the Service selects; a worker gets the URL and the token
    # and CA certificate by reference (a Secret volume), never the token itself.
    assert (
        _apply(kube, ns, _pod("head", "local", **{names.ROLE_ANNOTATION: "head"})).returncode == 0
    )
    assert _get(kube, ns, "pod", "head")["metadata"]["labels"][names.ROLE_LABEL] == "head"
    assert _apply(kube, ns, _pod("worker", "local")).returncode == 0
    [sidecar] = sidecars(_get(kube, ns, "pod", "worker"))
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["TRIALSYNC_HEAD_URL"]["value"] == f"https://{service_name}.{ns}.svc:9747"
    assert head_secret_of(_get(kube, ns, "pod", "worker")) == (secret_name, ["token", "ca.crt"])
    assert head_secret_of(_get(kube, ns, "pod", "head")) == (
        secret_name,
        ["token", "tls.crt", "tls.key"],
    )
    token = base64.b64decode(secret["data"][names.HEAD_TOKEN_KEY]).decode()
    assert token not in json.dumps(_get(kube, ns, "pod", "worker"))

    # Given an uploadDir, new pods upload; the Service stays while the head and the
    # worker still use it, and says so.
    assert in_use.FINALIZER in config["metadata"].get("finalizers", []) or wait_for(
        lambda: (
            in_use.FINALIZER
            in _get(kube, ns, "syncconfig", "local")["metadata"].get("finalizers", [])
        ),
        30,
        what="the finalizer",
    )
    kube.kubectl(
        "patch",
        "syncconfig",
        "local",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"uploadDir": "s3://bucket/x"}}),
    )
    retained = wait_for(
        lambda: _condition(kube, ns, "local", "HeadServiceRetained"), 30, what="the condition"
    )
    assert retained["status"] == "True"
    assert "(head, worker)" in retained["message"]
    assert "PodsInUse" in _event_reasons(kube, ns, "local")
    time.sleep(RECHECK_INTERVAL + 1)  # a recheck has come and gone
    assert kube.kubectl("get", "service", service_name, "-n", ns, check=False).returncode == 0
    assert _apply(kube, ns, _pod("uploader", "local")).returncode == 0
    [sidecar] = sidecars(_get(kube, ns, "pod", "uploader"))
    assert "TRIALSYNC_HEAD_URL" not in {e["name"] for e in sidecar["env"]}
    # Once they are gone, so is the Service; the Secret stays, owned, with its token.
    kube.kubectl("delete", "pod", "head", "worker", "-n", ns)
    wait_for(
        lambda: kube.kubectl("get", "service", service_name, "-n", ns, check=False).returncode != 0,
        30,
        what="the head Service to go",
    )
    wait_for(
        lambda: (
            _condition(kube, ns, "local", "HeadServiceRetained") is None
            and in_use.FINALIZER
            not in _get(kube, ns, "syncconfig", "local")["metadata"].get("finalizers", [])
        ),
        30,
        what="the condition and the finalizer to go",
    )
    kept = kube.kubectl("get", "secret", secret_name, "-n", ns, "-o", "json")
    assert json.loads(kept.stdout)["data"] == secret["data"]


def _condition(kube: Kube, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    status = _get(kube, namespace, "syncconfig", name).get("status") or {}
    found = [c for c in status.get("conditions") or [] if c["type"] == type_]
    return dict(found[0]) if found else None


def _event_reasons(kube: Kube, namespace: str, name: str) -> set[str]:
    out = kube.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    return {e["reason"] for e in json.loads(out)["items"]}


def test_a_deleted_syncconfig_stays_with_its_head_service_until_its_pods_have_finished(
    kube: Kube, ns: str
) -> None:
    assert _apply(kube, ns, syncconfig("team", {})).returncode == 0
    service_name = names.head_service_name("team")
    wait_for(
        lambda: (
            in_use.FINALIZER
            in _get(kube, ns, "syncconfig", "team")["metadata"].get("finalizers", [])
        ),
        30,
        what="the finalizer",
    )
    assert _apply(kube, ns, _pod("head", "team", **{names.ROLE_ANNOTATION: "head"})).returncode == 0
    assert _apply(kube, ns, _pod("worker", "team")).returncode == 0
    kube.kubectl("delete", "syncconfig", "team", "-n", ns, "--wait=false")

    ready = wait_for(
        lambda: (c := _condition(kube, ns, "team", "Ready")) and c["reason"] == "Terminating" and c,
        30,
        what="Ready=False, Terminating",
    )
    assert ready["status"] == "False"
    assert "(head, worker)" in ready["message"]
    assert "Terminating" in _event_reasons(kube, ns, "team")
    time.sleep(RECHECK_INTERVAL + 1)
    assert kube.kubectl("get", "service", service_name, "-n", ns, check=False).returncode == 0
    # A replacement worker (a Job's retry, KubeRay's new worker) is still injected.
    created = _apply(kube, ns, _pod("worker-2", "team"))
    assert created.returncode == 0
    assert "is being deleted" in created.stderr
    assert len(sidecars(_get(kube, ns, "pod", "worker-2"))) == 1

    # A finished pod no longer counts; once none is left, the SyncConfig goes.
    kube.kubectl(
        "patch",
        "pod",
        "worker",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Succeeded"}}),
    )
    kube.kubectl("delete", "pod", "head", "-n", ns)
    wait_for(
        lambda: "(worker-2)" in str((_condition(kube, ns, "team", "Ready") or {}).get("message")),
        30,
        what="the message to name the pod left",
    )
    kube.kubectl("delete", "pod", "worker-2", "-n", ns)
    wait_for(
        lambda: kube.kubectl("get", "syncconfig", "team", "-n", ns, check=False).returncode != 0,
        30,
        what="the SyncConfig to go",
    )


def test_ready_says_pods_wait_for_a_missing_credentials_secret_until_it_exists(
    kube: Kube, ns: str
) -> None:
    spec = {"uploadDir": "s3://bucket/exp", "credentials": {"secretRef": {"name": "s3-keys"}}}
    assert _apply(kube, ns, syncconfig("keyed", spec)).returncode == 0
    ready = wait_for(
        lambda: (c := _ready(kube, ns, "keyed")) and c["reason"] == "SecretMissing" and c,
        30,
        what="Ready=False, SecretMissing",
    )
    assert ready["status"] == "False"
    assert f"Secret {ns}/s3-keys" in ready["message"]
    # The operator learnt it without creating (or reading) anything.
    assert kube.kubectl("get", "secret", "s3-keys", "-n", ns, check=False).returncode != 0
    kube.kubectl(
        "create", "secret", "generic", "s3-keys", "-n", ns, "--from-literal=AWS_ACCESS_KEY_ID=k"
    )
    wait_for(
        lambda: (_ready(kube, ns, "keyed") or {}).get("status") == "True",
        30,
        what="Ready=True once the Secret exists",
    )


def test_a_file_upload_dir_is_refused_as_a_path_the_sidecar_cannot_write(
    kube: Kube, ns: str
) -> None:
    refused = _apply(kube, ns, syncconfig("on-disk", {"uploadDir": "file:///data/checkpoints"}))
    assert refused.returncode != 0
    assert "file:///data/checkpoints" in refused.stderr
    assert "read-only" in refused.stderr


def test_a_syncconfig_deleted_and_created_again_gets_head_objects_of_its_own_at_once(
    kube: Kube, ns: str
) -> None:
    # This control plane runs no garbage collector: the first SyncConfig's Secret and
    # Service stay, as they do on a cluster until the collector gets to them.
    assert _apply(kube, ns, syncconfig("again", {})).returncode == 0
    first = _get(kube, ns, "syncconfig", "again")["metadata"]["uid"]
    service_name = names.head_service_name("again")
    wait_for(
        lambda: kube.kubectl("get", "service", service_name, "-n", ns, check=False).returncode == 0,
        30,
        what="the first head Service",
    )
    kube.kubectl("delete", "syncconfig", "again", "-n", ns)
    assert _apply(kube, ns, syncconfig("again", {})).returncode == 0
    second = _get(kube, ns, "syncconfig", "again")["metadata"]["uid"]
    assert second != first

    def owner(kind: str, name: str) -> str | None:
        got = kube.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
        if got.returncode != 0:
            return None
        [ref] = json.loads(got.stdout)["metadata"]["ownerReferences"]
        return str(ref["uid"])

    wait_for(lambda: owner("service", service_name) == second, 30, what="the new head Service")
    secret_name = names.head_secret_name("again", second)
    wait_for(lambda: owner("secret", secret_name) == second, 30, what="the new token Secret")
    assert _apply(kube, ns, _pod("worker", "again")).returncode == 0
    assert head_secret_of(_get(kube, ns, "pod", "worker"))[0] == secret_name


def test_kubectl_get_shows_ready_and_where_the_data_goes(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("cloud", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    assert _apply(kube, ns, syncconfig("local", {})).returncode == 0
    wait_for(lambda: _ready(kube, ns, "cloud") and _ready(kube, ns, "local"), 30, what="statuses")
    rows = {
        line.split()[0]: line
        for line in kube.kubectl("get", "syncconfigs", "-n", ns).stdout.splitlines()[1:]
    }
    assert rows["cloud"].split()[1:5] == ["s3://bucket/exp", "300", "1800", "True"]
    assert rows["local"].split()[1:6] == ["head", "node", "300", "1800", "True"]


def test_a_short_grace_period_gets_an_admission_warning(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("exp", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    wait_for(lambda: _ready(kube, ns, "exp"), 30, what="a status")
    pod = _pod("hasty", "exp")
    pod["spec"]["terminationGracePeriodSeconds"] = 5
    created = _apply(kube, ns, pod)
    assert created.returncode == 0
    assert "Warning: trialsync: terminationGracePeriodSeconds=5 is shorter" in created.stderr


def test_a_pod_is_injected_as_soon_as_its_syncconfig_exists(kube: Kube, ns: str) -> None:
    assert _apply(kube, ns, syncconfig("fresh", {"uploadDir": "s3://bucket/exp"})).returncode == 0
    deadline = time.monotonic() + 10
    while True:  # the index follows the watch: at most a moment behind the apiserver
        created = _apply(kube, ns, _pod("quick", "fresh"))
        if created.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert created.returncode == 0, created.stderr
    pod = _get(kube, ns, "pod", "quick")
    [sidecar] = sidecars(pod)
    assert sidecar["name"] == names.SIDECAR_NAME
    init = pod["spec"]["initContainers"]
    assert init[-1] is sidecar
    assert sidecar["restartPolicy"] == "Always"
    status = json.loads(pod["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["config"] == "fresh"


def test_an_invalid_syncconfig_can_still_be_labelled_and_deleted_but_not_given_a_new_spec(
    kube: Kube, ns: str
) -> None:
    # Written while the validating webhook was away (or before an operator that refuses it).
    validating = kube.kubectl(
        "get", "validatingwebhookconfiguration", WEBHOOK_NAME, "-o", "json"
    ).stdout
    kube.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_NAME)
    try:
        spec = {"uploadDir": "abfs://container/exp"}
        assert _apply(kube, ns, syncconfig("stale", spec)).returncode == 0
    finally:
        restored = json.loads(validating)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            restored["metadata"].pop(key, None)
        kube.kubectl("create", "-f", "-", input=json.dumps(restored))
    wait_for(lambda: (_ready(kube, ns, "stale") or {}).get("status") == "False", 30, what="Ready")
    changed = json.dumps({"spec": {"syncPeriod": 60}})
    refused = wait_for(
        lambda: (
            (
                r := kube.kubectl(
                    "patch",
                    "syncconfig",
                    "stale",
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    changed,
                    check=False,
                )
            ).returncode
            != 0
            and r
        ),
        30,
        what="the webhook back",
    )
    assert "cannot serve abfs://" in refused.stderr
    kube.kubectl("label", "syncconfig", "stale", "-n", ns, "team=ml")
    kube.kubectl("delete", "syncconfig", "stale", "-n", ns, "--timeout=30s")
