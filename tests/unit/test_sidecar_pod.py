"""The hand-written injection result follows the injection contract (DESIGN.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.pods import DEFAULTS, apply, lookup_for, sidecars
from tests.support.sidecar_pod import (
    DEFAULT_UID,
    SIDECAR_NAME,
    STATUS_ANNOTATION,
    TMP_VOLUME,
    TRIAL_VOLUME,
    SidecarSpec,
    inject,
)
from trialsync_operator import names
from trialsync_operator.admission import injection

SIDECAR = SidecarSpec(
    image="docker.io/trialsync/sidecar:0.1.0",
    env={"TRIALSYNC_UPLOAD_DIR": "s3://b/x"},
    secret_env={"AWS_ACCESS_KEY_ID": ("creds", "id")},
)


def _pod(**spec: Any) -> dict[str, Any]:
    base = {"containers": [{"name": "trainer", "image": "t"}, {"name": "logger", "image": "l"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base | spec}


def test_sidecar_is_a_native_sidecar_after_the_pods_own_init_containers() -> None:
    pod = _pod(initContainers=[{"name": "istio-init", "image": "i"}])
    injected = inject(pod, SIDECAR)
    inits = injected["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["istio-init", SIDECAR_NAME]
    assert inits[1]["restartPolicy"] == "Always"
    assert [c["name"] for c in injected["spec"]["containers"]] == ["trainer", "logger"]
    assert pod["spec"]["initContainers"] == [{"name": "istio-init", "image": "i"}]  # untouched


def test_trial_volume_is_shared_by_every_container_and_tmp_is_private() -> None:
    injected = inject(_pod(), SIDECAR)
    volumes = {v["name"]: v for v in injected["spec"]["volumes"]}
    assert volumes[TRIAL_VOLUME] == {"name": TRIAL_VOLUME, "emptyDir": {}}
    for container in [*injected["spec"]["containers"], *injected["spec"]["initContainers"]]:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[TRIAL_VOLUME] == "/trial"
    sidecar = injected["spec"]["initContainers"][-1]
    assert {"name": TMP_VOLUME, "mountPath": "/tmp"} in sidecar["volumeMounts"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert (env["TMPDIR"], env["HOME"]) == ("/tmp", "/tmp")


def test_only_a_receiving_head_may_write_the_trial_volume() -> None:
    def trial_mount(spec: SidecarSpec) -> dict[str, Any]:
        sidecar = inject(_pod(), spec)["spec"]["initContainers"][-1]
        (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == TRIAL_VOLUME]
        return dict(mount)

    assert trial_mount(SIDECAR)["readOnly"] is True
    assert "readOnly" not in trial_mount(SidecarSpec(image="i", role="head"))
    uploading_head = SidecarSpec(image="i", role="head", env={"TRIALSYNC_UPLOAD_DIR": "s3://b"})
    assert trial_mount(uploading_head)["readOnly"] is True


def test_an_existing_volume_is_used_instead_of_an_emptydir() -> None:
    pod = _pod(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}])
    injected = inject(pod, SidecarSpec(image="i", volume="data"))
    assert [v["name"] for v in injected["spec"]["volumes"]] == ["data", TMP_VOLUME]
    sidecar = injected["spec"]["initContainers"][-1]
    assert {"name": "data", "mountPath": "/trial", "readOnly": True} in sidecar["volumeMounts"]


def test_sidecar_is_restricted_and_runs_as_the_trainers_user() -> None:
    sidecar = inject(_pod(), SIDECAR)["spec"]["initContainers"][-1]
    assert sidecar["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": DEFAULT_UID,
        "runAsGroup": DEFAULT_UID,
    }

    def user(pod: dict[str, Any]) -> tuple[int, int]:
        context = inject(pod, SIDECAR)["spec"]["initContainers"][-1]["securityContext"]
        assert context["runAsNonRoot"] is True
        return context["runAsUser"], context["runAsGroup"]

    assert user(_pod(securityContext={"runAsUser": 1000, "runAsGroup": 100})) == (1000, 100)
    assert user(_pod(securityContext={"runAsUser": 1000})) == (1000, 1000)
    first = {"name": "trainer", "image": "t", "securityContext": {"runAsUser": 4242}}
    assert user(_pod(containers=[first])) == (4242, 4242)


def test_probes_resources_and_credentials_by_reference() -> None:
    sidecar = inject(_pod(), SIDECAR)["spec"]["initContainers"][-1]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9746}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9746}
    assert set(sidecar["resources"]) == {"requests", "limits"}
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["TRIALSYNC_ROOT"]["value"] == "/trial"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "id"}},
    }
    assert all("value" not in e for e in env.values() if e["name"].startswith("AWS_"))


def test_status_annotation_records_what_was_injected() -> None:
    injected = inject(_pod(), SIDECAR)
    status = json.loads(injected["metadata"]["annotations"][STATUS_ANNOTATION])
    assert status == {
        "container": SIDECAR_NAME,
        "volumes": [TRIAL_VOLUME, TMP_VOLUME],
        "config": "hand-written",
    }


@pytest.mark.parametrize(
    ("role", "upload_dir", "user"),
    [("worker", "s3://bucket/x", None), ("head", None, 1000), ("worker", None, None)],
)
def test_the_operators_injection_makes_the_hand_written_specs_runtime_choices(
    role: str, upload_dir: str | None, user: int | None
) -> None:
    """The node tests run the hand-written spec; the operator must inject the same sidecar
    (what the node proves of one holds for the other)."""
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "labels": {names.INJECT_LABEL: "true"},
            "annotations": {
                names.CONFIG_ANNOTATION: "exp",
                names.MOUNT_PATH_ANNOTATION: "/trial",
                names.ROLE_ANNOTATION: role,
            },
        },
        "spec": {"terminationGracePeriodSeconds": 60, "containers": [{"name": "t", "image": "t"}]},
    }
    if user is not None:
        pod["spec"]["securityContext"] = {"runAsUser": user, "runAsGroup": user}
    spec = {"uploadDir": upload_dir} if upload_dir else {}
    config = {"metadata": {"name": "exp", "namespace": "ml", "uid": "u"}, "spec": spec}
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS).patch
    [operator] = sidecars(apply(pod, result))
    env = {"TRIALSYNC_UPLOAD_DIR": upload_dir} if upload_dir else {}
    [hand] = sidecars(
        inject(pod, SidecarSpec(image=DEFAULTS.image, mount_path="/trial", role=role, env=env))
    )
    for field in (
        "name",
        "args",
        "restartPolicy",
        "securityContext",
        "startupProbe",
        "livenessProbe",
        "ports",
        "volumeMounts",
        "terminationMessagePolicy",
        "imagePullPolicy",
    ):
        assert operator[field] == hand[field], field
    operator_env = {e["name"]: e.get("value") for e in operator["env"]}
    hand_env = {e["name"]: e.get("value") for e in hand["env"]}
    for name in ("TRIALSYNC_ROOT", "TRIALSYNC_ROLE", "TMPDIR", "HOME"):
        assert operator_env[name] == hand_env[name], name
