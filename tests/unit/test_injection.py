"""The pod mutation as a pure function: golden files, refusals, idempotency.

Each ``golden/injection/<case>.yaml`` holds a SyncConfig and a pod; ``<case>.injected.yaml``
is what the pod becomes, with the admission warnings. Regenerate them with
``TRIALSYNC_UPDATE_GOLDEN=1 pytest tests/unit/test_injection.py`` and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pods import DEFAULTS, apply, lookup_for, sidecars
from tests.support.sidecar_env import same_configuration, sidecar_settings
from trialsync import contract
from trialsync_operator import names
from trialsync_operator.admission import injection, patch

GOLDEN = Path(__file__).parent / "golden" / "injection"
CASES = sorted(p for p in GOLDEN.glob("*.yaml") if not p.name.endswith(".injected.yaml"))


def _run(case: dict[str, Any]) -> injection.Result:
    return injection.plan(case["pod"], case["namespace"], lookup_for(case["config"]), DEFAULTS)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_a_pod_becomes_what_its_golden_file_says(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    result = _run(case)
    got = {"warnings": result.warnings, "pod": apply(case["pod"], result.patch)}
    expected_path = path.with_name(path.stem + ".injected.yaml")
    if os.environ.get("TRIALSYNC_UPDATE_GOLDEN") == "1":
        expected_path.write_text(yaml.safe_dump(got, sort_keys=False, width=100))
    assert expected_path.exists(), f"no {expected_path.name}: run with TRIALSYNC_UPDATE_GOLDEN=1"
    assert got == yaml.safe_load(expected_path.read_text())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_the_sidecar_reads_back_the_configuration_the_operator_injected(
    path: Path, tmp_path: Path
) -> None:
    case = yaml.safe_load(path.read_text())
    result = _run(case)
    assert result.patch is not None
    assert result.config is not None
    (sidecar,) = sidecars(apply(case["pod"], result.patch))
    role = json.loads(result.patch["annotations"][names.STATUS_ANNOTATION])["role"]
    parsed = sidecar_settings(sidecar, tmp_path)
    same_configuration(result.config, role, parsed, case["namespace"])


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_injecting_twice_gives_one_sidecar(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    once = apply(case["pod"], _run(case).patch)
    again = injection.plan(once, case["namespace"], lookup_for(case["config"]), DEFAULTS)
    assert again.patch is None
    assert len(sidecars(once)) == 1


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_the_sidecar_is_appended_and_containers_keep_their_order(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    pod = apply(case["pod"], _run(case).patch)
    before = case["pod"]["spec"]
    after = pod["spec"]
    assert [c["name"] for c in after["initContainers"]] == [
        *(c["name"] for c in before.get("initContainers", [])),
        names.SIDECAR_NAME,
    ]
    assert [c["name"] for c in after["containers"]] == [c["name"] for c in before["containers"]]
    sidecar = after["initContainers"][-1]
    assert sidecar["restartPolicy"] == "Always"
    assert set(sidecar["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(sidecar["resources"]["limits"])
    context = sidecar["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    status = json.loads(pod["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["config"] == case["config"]["metadata"]["name"]
    assert status["generation"] == case["config"]["metadata"]["generation"]
    volumes = {v["name"] for v in after["volumes"]}
    assert set(status["volumes"]) <= volumes


def _pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "labels": {names.INJECT_LABEL: "true"},
            "annotations": {names.CONFIG_ANNOTATION: "exp", **annotations},
        },
        "spec": {"containers": [{"name": "trainer", "image": "t"}]},
    }


CONFIG = {
    "metadata": {"name": "exp", "namespace": "ml", "uid": "u"},
    "spec": {"uploadDir": "s3://bucket/x"},
}


@pytest.mark.parametrize(
    ("pod", "says"),
    [
        (
            {"metadata": {"labels": {names.INJECT_LABEL: "true"}}, "spec": {"containers": []}},
            "has no trialsync.io/config annotation",
        ),
        (_pod(), "say where the trial data lives"),
        (
            _pod(**{names.VOLUME_ANNOTATION: "v", names.MOUNT_PATH_ANNOTATION: "/r"}),
            "conflict",
        ),
        (_pod(**{names.VOLUME_ANNOTATION: "missing"}), "names no volume of the pod"),
        (_pod(**{names.MOUNT_PATH_ANNOTATION: "relative/path"}), "must be an absolute path"),
        (_pod(**{names.MOUNT_PATH_ANNOTATION: "/"}), "must be an absolute path other than /"),
        (
            _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", names.ROLE_ANNOTATION: "driver"}),
            "must be worker or head",
        ),
        (
            _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", names.STORAGE_PATH_ANNOTATION: "x/y"}),
            "storage-path='x/y' must be an absolute path",
        ),
        (
            _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", names.STORAGE_PATH_ANNOTATION: "/rr/x"}),
            "is not on the trial volume, which the trainer mounts at /r",
        ),
    ],
)
def test_a_pod_with_wrong_annotations_is_refused_saying_which(
    pod: dict[str, Any], says: str
) -> None:
    with pytest.raises(injection.Refusal, match=says):
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)


@pytest.mark.parametrize("annotations", [{names.MOUNT_PATH_ANNOTATION: "/r"}, {}])
def test_a_pod_naming_a_missing_syncconfig_is_refused_naming_it(
    annotations: dict[str, str],
) -> None:
    # Also when its other annotations are missing: the SyncConfig is what the user
    # must fix first.
    with pytest.raises(injection.Refusal, match=r"SyncConfig other/exp .* does not exist"):
        injection.plan(_pod(**annotations), "other", lookup_for(CONFIG), DEFAULTS)


def test_a_pod_naming_an_invalid_syncconfig_is_refused_with_the_reason() -> None:
    bad = copy.deepcopy(CONFIG)
    bad["spec"] = {"uploadDir": "abfs://container/x"}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    with pytest.raises(
        injection.Refusal, match=r"SyncConfig ml/exp is invalid: .*cannot serve abfs"
    ):
        injection.plan(pod, "ml", lookup_for(bad), DEFAULTS)


def test_a_mount_path_a_container_already_uses_is_refused() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/data/"})
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "pvc", "mountPath": "/data"}]
    with pytest.raises(injection.Refusal, match="already mounts volume 'pvc' at /data"):
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)


@pytest.mark.parametrize("annotations", [{names.MOUNT_PATH_ANNOTATION: "/r"}, {}])
def test_syncing_disabled_admits_the_pod_unmodified_with_a_warning(
    annotations: dict[str, str],
) -> None:
    disabled = {"metadata": {"name": "exp", "namespace": "ml"}, "spec": {"syncer": "none"}}
    result = injection.plan(_pod(**annotations), "ml", lookup_for(disabled), DEFAULTS)
    assert result.patch is None
    assert "disables syncing" in result.warnings[0]


def test_a_pod_that_already_has_the_sidecar_is_left_alone_even_without_the_status() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["spec"]["initContainers"] = [{"name": names.SIDECAR_NAME, "image": "x"}]
    assert injection.plan(pod, "ml", lookup_for(), DEFAULTS).patch is None


def test_the_credentials_secret_is_a_volume_the_sidecar_reads_never_its_environment(
    tmp_path: Path,
) -> None:
    """An environment is fixed when the container starts; a volume follows the Secret."""
    config = copy.deepcopy(CONFIG)
    config["spec"]["credentials"] = {"secretRef": {"name": "s3-keys"}}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    injected = apply(pod, injection.plan(pod, "ml", lookup_for(config), DEFAULTS).patch)
    (sidecar,) = sidecars(injected)
    assert "envFrom" not in sidecar
    assert not any("valueFrom" in item for item in sidecar["env"])
    (volume,) = [v for v in injected["spec"]["volumes"] if v.get("secret")]
    assert volume["secret"] == {"secretName": "s3-keys"}
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {
        "name": volume["name"],
        "mountPath": contract.CREDENTIALS_MOUNT,
        "readOnly": True,
    }
    # Only the sidecar gets the Secret; and it reads its keys from that mount.
    assert all(
        m["name"] != volume["name"]
        for c in injected["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    )
    assert sidecar_settings(sidecar, tmp_path).credentials_dir == contract.CREDENTIALS_MOUNT


def test_a_request_above_a_default_limit_raises_that_limit() -> None:
    config = copy.deepcopy(CONFIG)
    config["spec"]["sidecar"] = {"resources": {"requests": {"cpu": "2"}}}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS)
    resources = sidecars(apply(pod, result.patch))[0]["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("512Mi", 256 * 2**20), ("300Mi", 150 * 2**20), ("2Gi", 256 * 2**20), ("20Mi", 16 * 2**20)],
)
def test_upload_buffers_fit_half_the_memory_limit(limit: str, expected: int) -> None:
    assert injection.upload_memory({"limits": {"memory": limit}}) == expected


@pytest.mark.parametrize(
    "annotation",
    [
        names.CONFIG_ANNOTATION,
        names.ROLE_ANNOTATION,
        names.VOLUME_ANNOTATION,
        names.MOUNT_PATH_ANNOTATION,
    ],
)
@pytest.mark.parametrize("value", [7, ["v"], {"a": "b"}, True])
def test_an_annotation_that_is_not_a_string_is_refused_naming_it(
    annotation: str, value: object
) -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["metadata"]["annotations"][annotation] = value
    pod["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    with pytest.raises(injection.Refusal, match=f"annotation {annotation} must be a string"):
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)


def test_a_config_name_with_a_trailing_newline_is_refused() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["metadata"]["annotations"][names.CONFIG_ANNOTATION] = "exp\n"
    with pytest.raises(injection.Refusal, match="is not a SyncConfig name"):
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)


def test_a_huge_annotation_gives_a_short_refusal() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["metadata"]["annotations"][names.ROLE_ANNOTATION] = "é" * 10**6
    with pytest.raises(injection.Refusal) as refused:
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert len(str(refused.value)) < 300


def test_the_sidecar_runs_as_the_trainer_whose_own_user_wins_over_the_pods() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["spec"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 100}
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 2000}
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    context = sidecars(apply(pod, result.patch))[0]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (2000, 100)


@pytest.mark.parametrize(("grace", "warned"), [(None, True), (34, True), (35, False)])
def test_the_grace_period_warning_asks_for_the_final_sync_timeout_plus_five_seconds(
    grace: int | None, warned: bool
) -> None:
    config = copy.deepcopy(CONFIG)
    config["spec"]["finalSyncTimeoutSeconds"] = 30
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["spec"]["terminationGracePeriodSeconds"] = grace  # None: the kubelet's 30
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS)
    found = [w for w in result.warnings if "terminationGracePeriodSeconds" in w]
    assert bool(found) == warned
    if warned:
        assert "set it to at least 35" in found[0]


def test_the_json_patch_of_a_pod_with_junk_in_its_lists_gives_the_planned_pod() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["spec"]["containers"].insert(0, "junk")
    pod["spec"]["initContainers"] = [7, {"name": "init", "image": "i"}]
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert result.patch is not None
    ops = patch.json_patch(pod, result.patch)
    assert _apply_adds(pod, ops) == apply(pod, result.patch)


def _apply_adds(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` operations (all the injector writes) applied to a copy of ``doc``."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add"
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        target: Any = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), value)
        else:
            target[last] = value
    return out


def test_the_json_patch_gives_the_planned_pod_for_every_golden_case() -> None:
    for path in CASES:
        case = yaml.safe_load(path.read_text())
        result = _run(case)
        if result.patch is not None:
            ops = patch.json_patch(case["pod"], result.patch)
            assert _apply_adds(case["pod"], ops) == apply(case["pod"], result.patch), path.stem


def test_the_json_patch_only_appends_to_the_lists_a_pod_already_has() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})

    def mounts() -> list[dict[str, str]]:
        return [{"name": "x", "mountPath": "/x"}]

    pod["spec"]["initContainers"] = [{"name": "init", "image": "i", "volumeMounts": mounts()}]
    pod["spec"]["containers"].append({"name": "b", "image": "b", "volumeMounts": mounts()})
    pod["spec"]["volumes"] = [{"name": "x", "emptyDir": {}}]
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert result.patch is not None
    ops = patch.json_patch(pod, result.patch)
    paths = [op["path"] for op in ops]
    assert "/spec/initContainers/-" in paths
    # Nothing the pod had is rewritten: its lists only grow (the first container had no
    # volumeMounts, so its list is added).
    assert not {"/spec/initContainers", "/spec/containers", "/spec/volumes"} & set(paths)
    assert "/spec/containers/0/volumeMounts" in paths
    assert {"/spec/initContainers/0/volumeMounts/-", "/spec/containers/1/volumeMounts/-"} <= set(
        paths
    )
    assert _apply_adds(pod, ops) == apply(pod, result.patch)


CREDENTIALS_CONFIG = {
    "metadata": {"name": "exp", "namespace": "ml", "uid": "u"},
    "spec": {"uploadDir": "s3://bucket/x", "credentials": {"secretRef": {"name": "s3"}}},
}


@pytest.mark.parametrize(
    "path",
    [
        "/tmp",
        "/tmp/trialsync",
        "/tmp/ray_results",
        contract.CREDENTIALS_MOUNT,
        contract.CREDENTIALS_MOUNT + "/x",
        "/var/run",
        "/root/ray_results",
        contract.TRIAL_MOUNT,
    ],
)
def test_the_sidecar_mounts_the_trial_volume_at_its_own_path_whatever_the_trainers(
    path: str,
) -> None:
    """The trainer's mount path may be any path, even one of the sidecar's own mounts or
    one its user cannot reach in its image (/root is 0700 there): the sidecar mounts the
    same emptyDir at its own path."""
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: path})
    result = injection.plan(pod, "ml", lookup_for(CREDENTIALS_CONFIG), DEFAULTS)
    patched = apply(pod, result.patch)
    [sidecar] = sidecars(patched)
    assert [m["mountPath"] for m in sidecar["volumeMounts"]] == [
        contract.TRIAL_MOUNT,
        contract.SCRATCH_DIR,
        contract.CREDENTIALS_MOUNT,
    ]
    assert sidecar["volumeMounts"][0]["name"] == names.TRIAL_VOLUME
    [trainer] = patched["spec"]["containers"]
    assert {"name": names.TRIAL_VOLUME, "mountPath": path.rstrip("/") or "/"} in trainer[
        "volumeMounts"
    ]
    assert f"--root={contract.TRIAL_MOUNT}" in sidecar["args"] or any(
        e.get("value") == contract.TRIAL_MOUNT for e in sidecar.get("env", [])
    )


def test_without_credentials_a_mount_path_at_their_place_is_injected() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: contract.CREDENTIALS_MOUNT})
    assert injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS).patch is not None


def test_a_copied_web_identity_mount_at_the_scratch_dir_is_refused_naming_it() -> None:
    config = copy.deepcopy(CONFIG)
    config["spec"]["credentials"] = {"serviceAccount": {}}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["spec"]["containers"][0]["env"] = [
        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/tmp/token"}
    ]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "aws-token", "mountPath": "/tmp"}]
    pod["spec"]["volumes"] = [{"name": "aws-token", "projected": {"sources": []}}]
    with pytest.raises(
        injection.Refusal,
        match=r"would mount its scratch emptyDir \(/tmp\) and volume 'aws-token' of the pod "
        r"\(/tmp\) at one path",
    ):
        injection.plan(pod, "ml", lookup_for(config), DEFAULTS)


def _resources_of(pod: dict[str, Any], config: dict[str, Any] = CONFIG) -> dict[str, Any]:
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS)
    [sidecar] = sidecars(apply(pod, result.patch))
    return {"warnings": result.warnings, **sidecar["resources"]}


CPU_REQUEST = names.SIDECAR_RESOURCE_ANNOTATIONS["requests", "cpu"]
CPU_LIMIT = names.SIDECAR_RESOURCE_ANNOTATIONS["limits", "cpu"]
MEMORY_REQUEST = names.SIDECAR_RESOURCE_ANNOTATIONS["requests", "memory"]
MEMORY_LIMIT = names.SIDECAR_RESOURCE_ANNOTATIONS["limits", "memory"]


def test_the_sidecar_resource_annotations_are_named_as_documented() -> None:
    assert sorted(names.SIDECAR_RESOURCE_ANNOTATIONS.values()) == [
        f"trialsync.io/sidecar-{r}-{w}"
        for r in ("cpu", "ephemeral-storage", "memory")
        for w in ("limit", "request")
    ]


@pytest.mark.parametrize(
    ("annotations", "says"),
    [
        ({CPU_LIMIT: "lots"}, f"annotation {CPU_LIMIT}='lots' is not a resource quantity"),
        ({MEMORY_REQUEST: "-1Gi"}, f"annotation {MEMORY_REQUEST}='-1Gi' is not a resource"),
        ({CPU_REQUEST: "1e999999"}, f"annotation {CPU_REQUEST}='1e999999' is not a resource"),
        ({MEMORY_LIMIT: "0"}, f"annotation {MEMORY_LIMIT}='0' must be more than 0"),
        (
            {CPU_REQUEST: "2", CPU_LIMIT: "1500m"},
            f"annotations {CPU_REQUEST}=2 and {CPU_LIMIT}=1500m conflict: the sidecar's cpu "
            "request is above its limit; lower the request or raise the limit",
        ),
        (
            {names.SIDECAR_UID_ANNOTATION: "ray"},
            f"annotation {names.SIDECAR_UID_ANNOTATION}='ray' must be a user id: a whole "
            "number from 0 to 2147483647",
        ),
        ({names.SIDECAR_UID_ANNOTATION: "2147483648"}, "must be a user id"),
        ({names.SIDECAR_GID_ANNOTATION: "-5"}, f"{names.SIDECAR_GID_ANNOTATION}='-5' must be a "),
        ({names.SIDECAR_GID_ANNOTATION: "1000 "}, "must be a group id"),
        (
            {names.BANDWIDTH_LIMIT_ANNOTATION: "fast"},
            f"annotation {names.BANDWIDTH_LIMIT_ANNOTATION}='fast': bandwidth_limit must be a "
            "quantity of bytes per second",
        ),
        ({names.BANDWIDTH_LIMIT_ANNOTATION: "100"}, "at least 1Ki"),
    ],
)
def test_a_wrong_sidecar_override_is_refused_naming_the_annotation(
    annotations: dict[str, str], says: str
) -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", **annotations})
    with pytest.raises(injection.Refusal) as refused:
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert says in str(refused.value)


@pytest.mark.parametrize("key", [CPU_LIMIT, names.SIDECAR_UID_ANNOTATION])
@pytest.mark.parametrize("value", [7, ["1"], True])
def test_a_sidecar_override_that_is_not_a_string_is_refused_naming_it(
    key: str, value: object
) -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r"})
    pod["metadata"]["annotations"][key] = value
    with pytest.raises(injection.Refusal, match=f"annotation {key} must be a string"):
        injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)


def test_the_pods_annotations_win_over_the_syncconfig_and_the_defaults() -> None:
    config = copy.deepcopy(CONFIG)
    config["spec"]["sidecar"] = {
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2"}}
    }
    # A limit below the SyncConfig's request lowers that request; a request above the
    # defaults' limit raises that limit.
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", CPU_LIMIT: "300m", MEMORY_REQUEST: "2Gi"})
    got = _resources_of(pod, config)
    assert got["requests"] == {"cpu": "300m", "memory": "2Gi"}
    assert got["limits"] == {"cpu": "300m", "memory": "2Gi"}
    assert got["warnings"] == []


def _guaranteed_pod(**annotations: str) -> dict[str, Any]:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", **annotations})
    pod["spec"]["terminationGracePeriodSeconds"] = 60
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "4", "memory": "8Gi"}}
    return pod


def test_a_guaranteed_pod_gets_sidecar_requests_equal_to_its_limits_and_is_told() -> None:
    pod = _guaranteed_pod()
    assert injection.pod_qos(pod["spec"]) == injection.GUARANTEED
    got = _resources_of(pod)
    assert got["requests"] == got["limits"] == dict(DEFAULTS.limits)
    [warning] = got["warnings"]
    assert "requests were raised to its limits (cpu 1, memory 512Mi)" in warning
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert injection.pod_qos(apply(pod, result.patch)["spec"]) == injection.GUARANTEED


def test_a_guaranteed_pods_own_request_annotation_is_kept_with_a_warning_that_it_is_burstable() -> (
    None
):
    pod = _guaranteed_pod(**{MEMORY_REQUEST: "300Mi"})
    got = _resources_of(pod)
    assert got["requests"] == {"cpu": "1", "memory": "300Mi"}
    burstable = [w for w in got["warnings"] if "becomes Burstable" in w]
    assert burstable, got["warnings"]
    assert f"annotation {MEMORY_REQUEST}=300Mi is below the memory limit 512Mi" in burstable[0]
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    assert injection.pod_qos(apply(pod, result.patch)["spec"]) == injection.BURSTABLE


def test_a_guaranteed_pod_whose_sidecar_requests_are_its_limits_gets_no_warning() -> None:
    got = _resources_of(_guaranteed_pod(**{CPU_REQUEST: "1", MEMORY_REQUEST: "512Mi"}))
    assert got["requests"] == got["limits"]
    assert got["warnings"] == []


@pytest.mark.parametrize(
    "change",
    [
        # One container with a request below its limit.
        lambda spec: spec["containers"].append(
            {"name": "b", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}}
        ),
        # Memory without cpu.
        lambda spec: spec["containers"][0]["resources"]["limits"].pop("cpu"),
        # An init container without resources (BestEffort), a sidecar or not.
        lambda spec: spec.setdefault("initContainers", []).append({"name": "i"}),
        lambda spec: spec.setdefault("initContainers", []).append(
            {"name": "i", "restartPolicy": "Always"}
        ),
        # A native sidecar that is Burstable.
        lambda spec: spec.setdefault("initContainers", []).append(
            {"name": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1"}}}
        ),
        # Pod-level resources decide the class: the containers' shapes do not matter.
        lambda spec: spec.__setitem__("resources", {"limits": {"cpu": "8", "memory": "16Gi"}}),
    ],
)
def test_a_pod_not_guaranteed_by_its_containers_keeps_the_sidecars_requests(
    change: Callable[[dict[str, Any]], None],
) -> None:
    pod = _guaranteed_pod()
    change(pod["spec"])
    got = _resources_of(pod)
    assert got["requests"] == dict(DEFAULTS.requests)
    assert not [w for w in got["warnings"] if "Guaranteed" in w]


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ({}, injection.BEST_EFFORT),
        ({"limits": {"nvidia.com/gpu": "1"}}, injection.BEST_EFFORT),
        ({"limits": {"cpu": "1", "memory": "1Gi"}}, injection.GUARANTEED),
        ({"limits": {"cpu": "1000m", "memory": "1Gi"}, "requests": {"cpu": "1"}}, "Guaranteed"),
        ({"requests": {"cpu": "1", "memory": "1Gi"}}, injection.BURSTABLE),
        ({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "0"}}, "Burstable"),
        ({"limits": {"cpu": "1"}}, injection.BURSTABLE),
        ({"limits": {"cpu": "0", "memory": "0"}}, injection.BEST_EFFORT),
    ],
)
def test_a_containers_qos_class_follows_kubernetes_rule(
    resources: dict[str, Any], qos: str
) -> None:
    assert injection.pod_qos({"containers": [{"name": "c", "resources": resources}]}) == qos


def test_the_sidecar_uid_and_gid_annotations_win_over_the_trainers_user() -> None:
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", names.SIDECAR_UID_ANNOTATION: "1000"})
    pod["spec"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 100}
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    [sidecar] = sidecars(apply(pod, result.patch))
    context = sidecar["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (
        1000,
        100,
        True,
    )
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    # The trainer's own uid: nothing to share.
    assert "TRIALSYNC_SHARE_FILES" not in env

    pod["metadata"]["annotations"][names.SIDECAR_UID_ANNOTATION] = "0"
    pod["metadata"]["annotations"][names.SIDECAR_GID_ANNOTATION] = "0"
    result = injection.plan(pod, "ml", lookup_for(CONFIG), DEFAULTS)
    [sidecar] = sidecars(apply(pod, result.patch))
    assert sidecar["securityContext"]["runAsUser"] == 0
    assert sidecar["securityContext"]["runAsGroup"] == 0
    assert "runAsNonRoot" not in sidecar["securityContext"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    # Another uid than the trainer's: what the sidecar writes is shared.
    assert env["TRIALSYNC_SHARE_FILES"] == "true"
    assert any(
        f"{names.SIDECAR_UID_ANNOTATION}=0 runs the trialsync sidecar as root" in w
        for w in result.warnings
    )


def test_a_mount_path_at_the_head_node_secret_is_the_trainers_alone() -> None:
    # No uploadDir: a worker's sidecar mounts its SyncConfig's head-node Secret, and the
    # trial volume at its own path, whatever the trainer's.
    config = {"metadata": {"name": "exp", "namespace": "ml", "uid": "u"}, "spec": {}}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: contract.HEAD_SECRET_MOUNT})
    [sidecar] = sidecars(apply(pod, injection.plan(pod, "ml", lookup_for(config), DEFAULTS).patch))
    paths = [m["mountPath"] for m in sidecar["volumeMounts"]]
    assert paths[0] == contract.TRIAL_MOUNT
    assert contract.HEAD_SECRET_MOUNT in paths


@pytest.mark.parametrize(
    ("spec", "annotation", "env"),
    [
        ({}, None, set()),
        ({"keepCheckpoints": 3, "bandwidthLimit": "50Mi"}, None, {"3", str(50 * 2**20)}),
        ({"bandwidthLimit": "50Mi"}, "200M", {"200000000"}),
        ({"bandwidthLimit": "50Mi"}, "0", set()),
    ],
)
def test_retention_and_the_bandwidth_limit_reach_the_sidecar_the_annotation_winning(
    spec: dict[str, Any], annotation: str | None, env: set[str]
) -> None:
    config = {**CONFIG, "spec": {**CONFIG["spec"], **spec}}
    extra = {names.BANDWIDTH_LIMIT_ANNOTATION: annotation} if annotation else {}
    pod = _pod(**{names.MOUNT_PATH_ANNOTATION: "/r", **extra})
    result = injection.plan(pod, "ml", lookup_for(config), DEFAULTS)
    [sidecar] = sidecars(apply(pod, result.patch))
    values = {e["name"]: e.get("value") for e in sidecar["env"]}
    got = {
        values[name]
        for name in ("TRIALSYNC_KEEP_CHECKPOINTS", "TRIALSYNC_BANDWIDTH_LIMIT")
        if name in values
    }
    assert got == env
