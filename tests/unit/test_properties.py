"""Property tests: thousands of generated SyncConfigs and pods thrown at validation and
mutation. Nothing crashes, every refusal names what to fix, and every accepted pod comes
out whole with one sidecar, whose environment the sidecar reads back as the SyncConfig
the operator meant.

Each property runs inside its test (``_run``) and counts the examples that reached each
branch, so a test fails when its generated input stops reaching the branch its name
promises, not only when the branch misbehaves.
"""

from __future__ import annotations

import copy
import json
import pathlib
import posixpath
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.generated import pods, syncconfigs, valid_syncconfigs, well_formed_pods
from tests.support.pods import DEFAULTS, SIDECAR, apply, sidecars
from tests.support.sidecar_env import same_configuration, sidecar_settings
from trialsync import contract
from trialsync.contract import Mode
from trialsync_operator import names, quantity
from trialsync_operator.admission import injection
from trialsync_operator.syncconfig import ConfigView, view_of

EXAMPLES = 1000
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
NAMESPACE = "ml"
#: What names a SyncConfig's field in a message: ``spec...``, the field's CRD name, or
#: its setting's name (the seed's own messages speak of upload_dir, syncer, ...).
FIELD_WORDS = (
    "spec",
    *contract.BY_CRD_FIELD,
    *(setting.name for setting in contract.BY_CRD_FIELD.values()),
)
#: The annotations a pod sets, besides the SyncConfig's.
POD_ANNOTATIONS = (names.ROLE_ANNOTATION, names.VOLUME_ANNOTATION, names.MOUNT_PATH_ANNOTATION)


@pytest.fixture(scope="module")
def trial_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The sidecar's root for the round trip: one directory for every example."""
    return tmp_path_factory.mktemp("trial-root")


def _run(prop: Callable[[], None], reached: Counter[str]) -> Counter[str]:
    """Run the property ``prop`` (a ``@given`` test) with ``reached`` emptied first: it
    counts the examples that reached each branch."""
    reached.clear()
    prop()
    print(f"branches reached: {dict(reached)}")
    return reached


def test_any_syncconfig_yields_a_view_valid_or_saying_what_to_fix() -> None:
    reached: Counter[str] = Counter()

    @PROFILE
    @given(syncconfigs(namespace=NAMESPACE, hostile=3))
    def prop(config: dict[str, Any]) -> None:
        view = view_of(config, SIDECAR)
        assert isinstance(view, ConfigView)
        assert view.key == (NAMESPACE, config["metadata"]["name"])
        if view.valid:
            reached["valid"] += 1
            event("valid")
            assert view.message == ""
            assert 0 < view.sync_period <= 604800
            assert 0 < view.sync_timeout <= 604800
            json.loads(view.storage_options)
            json.loads(view.resources)
        else:
            reached["invalid"] += 1
            event("invalid")
            assert view.message.strip(), "a refusal without a message"
            assert len(view.message) < 2000
            # Saying what to fix: the field at fault, by one of its names.
            assert any(word in view.message for word in FIELD_WORDS), view.message

    counts = _run(prop, reached)
    # Half the configs come from valid specs, half from hostile ones (a third of those
    # valid too): about 700 valid, 300 invalid.
    assert counts["valid"] >= EXAMPLES // 2, counts
    assert counts["invalid"] >= EXAMPLES * 15 // 100, counts


def test_any_pod_is_refused_with_a_reason_or_comes_out_whole_with_one_sidecar(
    trial_root: pathlib.Path,
) -> None:
    reached: Counter[str] = Counter()

    @PROFILE
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        configs = data.draw(
            st.lists(
                syncconfigs(namespace=NAMESPACE),
                min_size=1,
                max_size=2,
                unique_by=lambda c: c["metadata"]["name"],
            )
        )
        views = {(NAMESPACE, c["metadata"]["name"]): view_of(c, SIDECAR) for c in configs}
        pod = data.draw(pods([c["metadata"]["name"] for c in configs]))
        lookup = lambda ns, name: views.get((ns, name))  # noqa: E731
        try:
            result = injection.plan(pod, NAMESPACE, lookup, DEFAULTS)
        except injection.Refusal as refusal:
            reached["refused"] += 1
            event("refused")
            _assert_names_the_fault(str(refusal), pod, views)
            return
        out = apply(pod, result.patch)
        json.dumps(out)  # serialisable, as a JSON patch must be
        if result.patch is None:
            reached["admitted unmodified"] += 1
            event("admitted unmodified")
            # Only a SyncConfig that disables syncing admits a pod without a sidecar.
            assert out == pod
            assert sidecars(out) == []
            view = views[(NAMESPACE, pod["metadata"]["annotations"][names.CONFIG_ANNOTATION])]
            assert result.config == view
            assert view.mode is Mode.DISABLED
            assert any(
                f"SyncConfig {NAMESPACE}/{view.name} disables syncing" in w for w in result.warnings
            ), result.warnings
            return
        reached["injected"] += 1
        event("injected")
        _check_whole(pod, out)
        _check_round_trip(pod, out, result, trial_root)
        again = injection.plan(out, NAMESPACE, lookup, DEFAULTS)
        assert again.patch is None, "a second pass must not inject again"
        reached["injected and checked whole"] += 1

    counts = _run(prop, reached)
    # Four in five pods are well formed and three in four SyncConfigs valid: about 60%
    # of the examples reach the sidecar (at least 45% must), and each of the other
    # branches is still reached.
    assert counts["injected and checked whole"] >= EXAMPLES * 45 // 100, counts
    assert counts["refused"] >= EXAMPLES // 10, counts
    assert counts["admitted unmodified"] >= 5, counts


def test_a_well_formed_pod_and_a_syncing_config_always_give_one_working_sidecar(
    trial_root: pathlib.Path,
) -> None:
    reached: Counter[str] = Counter()

    @PROFILE
    @given(valid_syncconfigs(namespace=NAMESPACE, modes=("upload", "head")), well_formed_pods())
    def prop(config: dict[str, Any], pod: dict[str, Any]) -> None:
        view = view_of(config, SIDECAR)
        assert view.valid, view.message
        assert view.mode is not Mode.DISABLED
        lookup = lambda ns, name: view  # noqa: E731
        clash = _mount_path_clash(pod)
        try:
            result = injection.plan(pod, NAMESPACE, lookup, DEFAULTS)
        except injection.Refusal as refusal:
            reason = str(refusal)
        else:
            reason = ""
        if reason:
            # Only a trial mount path that a container already uses refuses such a pod.
            assert clash is not None, f"a well-formed pod refused: {reason}"
            container, volume = clash
            assert reason.startswith(
                f"container {container!r} already mounts volume {volume!r} at "
            ), reason
            assert names.VOLUME_ANNOTATION in reason
            reached["refused: the mount path is taken"] += 1
            return
        assert clash is None, f"a trial dir mounted over a container's mount {clash}"
        assert result.patch is not None
        out = apply(pod, result.patch)
        _check_whole(pod, out)
        _check_round_trip(pod, out, result, trial_root)
        assert injection.plan(out, NAMESPACE, lookup, DEFAULTS).patch is None
        reached["one working sidecar"] += 1

    counts = _run(prop, reached)
    assert counts["one working sidecar"] >= EXAMPLES * 7 // 10, counts
    # The one refusal (about 1.5%) is still reached.
    assert counts["refused: the mount path is taken"] >= 3, counts


def _mount_path_clash(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (container, volume) mounted where the pod asks the trial dir mounted."""
    path = pod["metadata"]["annotations"].get(names.MOUNT_PATH_ANNOTATION)
    if path is None:
        return None
    spec = pod["spec"]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for mount in container.get("volumeMounts", []):
            if posixpath.normpath(mount["mountPath"]) == posixpath.normpath(path):
                return container["name"], mount["name"]
    return None


def _assert_names_the_fault(
    message: str, pod: Mapping[str, Any], views: Mapping[tuple[str, str], ConfigView]
) -> None:
    """A refusal names what is at fault, in the order the injection decides: the
    SyncConfig annotation, then the SyncConfig itself, then the pod's own annotations or
    spec."""
    assert message.strip(), "a refusal without a message"
    annotations = pod["metadata"]["annotations"]
    config = annotations.get(names.CONFIG_ANNOTATION)
    if not isinstance(config, str) or not config:
        assert names.CONFIG_ANNOTATION in message, message
        return
    view = views.get((NAMESPACE, config))
    if view is None:
        # Not a SyncConfig name, or no SyncConfig of that name: either way, by its value.
        assert (
            f"annotation {names.CONFIG_ANNOTATION}={config!r}" in message
            or message
            == f"SyncConfig {NAMESPACE}/{config} (annotation {names.CONFIG_ANNOTATION}) "
            "does not exist: create it, or fix the annotation"
        ), message
        return
    if not view.valid:
        assert message == f"SyncConfig {NAMESPACE}/{config} is invalid: {view.message}"
        return
    # The SyncConfig is fine: the pod's own annotations or spec are at fault.
    culprits = []
    for key in POD_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str):
            culprits.append(f"annotation {key}={value!r}")
        elif value is not None:
            culprits.append(f"annotation {key} must be a string")
    volume, path = (
        annotations.get(names.VOLUME_ANNOTATION),
        annotations.get(names.MOUNT_PATH_ANNOTATION),
    )
    both = names.VOLUME_ANNOTATION in message and names.MOUNT_PATH_ANNOTATION in message
    if bool(volume) == bool(path) and both:  # both set, or neither: it names both
        return
    spec = pod["spec"]
    culprits += [f"the pod already has a volume named {v['name']!r}" for v in spec["volumes"]]
    culprits += [
        f"container {c['name']!r} already mounts volume "
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]
    assert any(culprit in message for culprit in culprits), (message, culprits)


def _check_whole(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """``after`` is ``before`` with one sidecar, and nothing of the pod's own lost."""
    spec, old = after["spec"], before["spec"]
    [sidecar] = sidecars(after)
    assert spec["initContainers"][-1] is sidecar, "the sidecar comes after the pod's own"
    assert sidecar["name"] == names.SIDECAR_NAME
    assert sidecar["restartPolicy"] == "Always"
    # The pod's containers, in their order, unchanged but for a mount of the trial dir.
    for field in ("initContainers", "containers"):
        mine = spec.get(field, [])[: len(old.get(field, []))]
        assert [c["name"] for c in mine] == [c["name"] for c in old.get(field, [])]
        for new, was in zip(mine, old.get(field, []), strict=True):
            mounts, had = new.get("volumeMounts", []), was.get("volumeMounts", [])
            assert mounts[: len(had)] == had
            added = mounts[len(had) :]
            assert {**new, "volumeMounts": had} == {**was, "volumeMounts": had}
            assert all(m["name"] == names.TRIAL_VOLUME for m in added), added
    assert len(spec["containers"]) == len(old["containers"])
    assert spec["volumes"][: len(old["volumes"])] == old["volumes"]
    volume_names = [v["name"] for v in spec["volumes"]]
    assert len(volume_names) == len(set(volume_names)), "duplicate volume names"
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    names_seen = Counter(c["name"] for c in containers)
    assert max(names_seen.values()) == 1, "duplicate container names"
    for container in containers:
        paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{container['name']} mounts twice at one path"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volume_names, f"mount of a missing volume {mount['name']}"
    requests, limits = sidecar["resources"]["requests"], sidecar["resources"]["limits"]
    assert set(requests) <= set(limits), "a request without its limit"
    for resource, amount in requests.items():
        assert quantity.parse(amount) <= quantity.parse(limits[resource])
    assert all(isinstance(e.get("value", ""), str) for e in sidecar["env"])
    status = json.loads(after["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["container"] == names.SIDECAR_NAME
    assert status["volumes"] == volume_names[len(old["volumes"]) :]


def _check_round_trip(
    pod: Mapping[str, Any],
    out: Mapping[str, Any],
    result: injection.Result,
    root: pathlib.Path,
) -> None:
    """The contract's round trip: the sidecar reads its injected environment back as the
    SyncConfig the operator meant, for the pod's role, at the trial dir's mount."""
    view = result.config
    assert view is not None
    [sidecar] = sidecars(out)
    annotations = pod["metadata"]["annotations"]
    role = annotations.get(names.ROLE_ANNOTATION)
    if role is None:  # absent, or null (a body from elsewhere): the default role
        role = contract.ROLE.default
    status = json.loads(out["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert (status["role"], status["config"]) == (role, view.name)
    assert (status["uid"], status["generation"]) == (view.uid, view.generation)
    assert out["metadata"]["labels"][names.CONFIG_LABEL] == view.name
    assert out["metadata"]["labels"][names.ROLE_LABEL] == role

    parsed = sidecar_settings(sidecar, root)
    same_configuration(view, role, parsed, NAMESPACE)
    assert parsed.upload_memory == injection.upload_memory(sidecar["resources"])

    # The root the sidecar is told is where it mounts the trial volume.
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    # The sidecar's own path, whatever the trainer's.
    volume = annotations.get(names.VOLUME_ANNOTATION) or names.TRIAL_VOLUME
    trial = {"name": volume, "mountPath": contract.TRIAL_MOUNT}
    assert env[contract.ROOT.env] == trial["mountPath"]
    mounts = [{"name": m["name"], "mountPath": m["mountPath"]} for m in sidecar["volumeMounts"]]
    assert trial in mounts, mounts


#: A container's resources that make it Guaranteed: cpu and memory limits, requests left
#: to default to them or equal (however written); sometimes a GPU.
GUARANTEED_RESOURCES = st.builds(
    lambda cpu, memory, shape, gpu: {
        "limits": {"cpu": cpu[0], "memory": memory[0], **gpu},
        **({"requests": {"cpu": cpu[1], "memory": memory[1]}} if shape else {}),
    },
    st.sampled_from([("500m", "0.5"), ("1", "1000m"), ("4", "4"), ("8", "8000m")]),
    st.sampled_from([("512Mi", "536870912"), ("1Gi", "1024Mi"), ("16Gi", "16Gi")]),
    st.booleans(),
    st.sampled_from([{}, {"nvidia.com/gpu": "1"}]),
)
#: Resources that make a container Burstable or BestEffort.
OTHER_RESOURCES = st.sampled_from(
    [
        {},
        {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        {"limits": {"cpu": "1"}},
        {"limits": {"nvidia.com/gpu": "1"}},
    ]
)


def _guaranteed_by_kubernetes_rule(spec: Mapping[str, Any]) -> bool:
    """Every init container (a native sidecar or not) and container has cpu and memory
    limits above 0 and requests equal to them, a missing request being its limit (the
    apiserver's default); written apart from ``injection.pod_qos``."""
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        limits = container.get("resources", {}).get("limits", {})
        requests = {**limits, **container.get("resources", {}).get("requests", {})}
        for resource in ("cpu", "memory"):
            if resource not in limits or quantity.parse(limits[resource]) <= 0:
                return False
            if quantity.parse(requests[resource]) != quantity.parse(limits[resource]):
                return False
    return True


def test_a_pod_whose_containers_are_all_guaranteed_stays_guaranteed_with_its_sidecar() -> None:
    reached: Counter[str] = Counter()

    @PROFILE
    @given(
        valid_syncconfigs(namespace=NAMESPACE, modes=("upload", "head")),
        well_formed_pods(),
        st.data(),
    )
    def prop(config: dict[str, Any], pod: dict[str, Any], data: st.DataObject) -> None:
        view = view_of(config, SIDECAR)
        lookup = lambda ns, name: view  # noqa: E731
        spec = pod["spec"]
        if data.draw(st.booleans()):
            native = {"name": "proxy", "image": "example.com/proxy:1", "restartPolicy": "Always"}
            spec.setdefault("initContainers", []).append(native)
        # Three in four pods have every container Guaranteed; the rest one container not.
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        odd = data.draw(st.sampled_from([None, None, None, *range(len(containers))]))
        for i, container in enumerate(containers):
            shape = OTHER_RESOURCES if i == odd else GUARANTEED_RESOURCES
            container["resources"] = data.draw(shape)
        annotations = pod["metadata"]["annotations"]
        for resource, amounts in (("cpu", ["250m", "2"]), ("memory", ["384Mi", "2Gi"])):
            limit = data.draw(st.sampled_from([None, *amounts]))
            if limit is not None:
                annotations[names.SIDECAR_RESOURCE_ANNOTATIONS["limits", resource]] = limit
        if _mount_path_clash(pod) is not None:
            with pytest.raises(injection.Refusal, match="already mounts volume"):
                injection.plan(pod, NAMESPACE, lookup, DEFAULTS)
            reached["refused: the mount path is taken"] += 1
            return
        result = injection.plan(pod, NAMESPACE, lookup, DEFAULTS)
        out = apply(pod, result.patch)
        _check_whole(pod, out)
        [sidecar] = sidecars(out)
        requests, limits = sidecar["resources"]["requests"], sidecar["resources"]["limits"]
        for resource in ("cpu", "memory"):
            key = names.SIDECAR_RESOURCE_ANNOTATIONS["limits", resource]
            if key in annotations:
                assert limits[resource] == annotations[key]
        bare = copy.deepcopy(pod)
        for container in [*bare["spec"].get("initContainers", []), *bare["spec"]["containers"]]:
            container.pop("resources")
        [plain] = sidecars(apply(bare, injection.plan(bare, NAMESPACE, lookup, DEFAULTS).patch))
        if _guaranteed_by_kubernetes_rule(spec):
            reached["guaranteed, and stays so"] += 1
            event("guaranteed")
            assert _guaranteed_by_kubernetes_rule(out["spec"]), sidecar["resources"]
            assert injection.pod_qos(out["spec"]) == injection.GUARANTEED
            # Warned exactly when a request had to be raised to its limit.
            raised = any(
                quantity.parse(plain["resources"]["requests"].get(r, "0"))
                != quantity.parse(plain["resources"]["limits"][r])
                for r in ("cpu", "memory")
            )
            warned = any("stays Guaranteed" in w for w in result.warnings)
            assert warned == raised, result.warnings
        else:
            reached["not guaranteed: requests as configured"] += 1
            event("not guaranteed")
            assert injection.pod_qos(out["spec"]) != injection.GUARANTEED
            # The same sidecar as for a pod without any resources.
            assert sidecar["resources"] == plain["resources"]
        # The upload buffers are sized from the limit, raised requests or not.
        env = {e["name"]: e.get("value") for e in sidecar["env"]}
        assert env["TRIALSYNC_UPLOAD_MEMORY"] == str(injection.upload_memory({"limits": limits}))
        assert requests.keys() <= limits.keys()

    counts = _run(prop, reached)
    assert counts["guaranteed, and stays so"] >= EXAMPLES * 6 // 10, counts
    assert counts["not guaranteed: requests as configured"] >= EXAMPLES // 10, counts
