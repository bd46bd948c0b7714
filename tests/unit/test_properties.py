"""Property tests: thousands of generated SyncConfigs and pods thrown at validation and
mutation. Nothing crashes, every refusal says what to fix, and no accepted pod comes out
with two sidecars or a broken spec."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.generated import pods, syncconfigs, valid_syncconfigs, well_formed_pods
from tests.support.pods import DEFAULTS, SIDECAR, apply, sidecars
from trialsync_operator import names, quantity
from trialsync_operator.admission import injection
from trialsync_operator.syncconfig import ConfigView, view_of

EXAMPLES = 1000
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROFILE
@given(syncconfigs())
def test_any_syncconfig_yields_a_view_valid_or_saying_what_to_fix(config: dict[str, Any]) -> None:
    view = view_of(config, SIDECAR)
    assert isinstance(view, ConfigView)
    if view.valid:
        assert view.message == ""
        assert 0 < view.sync_period <= 604800
        assert 0 < view.sync_timeout <= 604800
        json.loads(view.storage_options)
        json.loads(view.resources)
    else:
        assert view.message.strip(), "a refusal without a message"
        assert len(view.message) < 2000


@PROFILE
@given(st.data())
def test_any_pod_is_refused_with_a_reason_or_comes_out_whole_with_one_sidecar(
    data: st.DataObject,
) -> None:
    configs = data.draw(st.lists(syncconfigs(), max_size=3))
    views = {
        (c["metadata"]["namespace"], c["metadata"]["name"]): view_of(c, SIDECAR) for c in configs
    }
    pod = data.draw(pods([c["metadata"]["name"] for c in configs]))
    lookup = lambda ns, name: views.get((ns, name))  # noqa: E731
    try:
        result = injection.plan(pod, "ml", lookup, DEFAULTS)
    except injection.Refusal as refusal:
        event("refused")
        message = str(refusal)
        assert message.strip(), "a refusal without a message"
        return
    event("injected" if result.patch is not None else "admitted unmodified")
    out = apply(pod, result.patch)
    json.dumps(out)  # serialisable, as a JSON patch must be
    assert len(sidecars(out)) == (1 if result.patch is not None else 0)
    if result.patch is None:
        assert out == pod
        return
    _check_whole(pod, out)
    again = injection.plan(out, "ml", lookup, DEFAULTS)
    assert again.patch is None, "a second pass must not inject again"


@PROFILE
@given(valid_syncconfigs(), well_formed_pods())
def test_a_well_formed_pod_and_config_always_give_one_working_sidecar(
    config: dict[str, Any], pod: dict[str, Any]
) -> None:
    view = view_of(config, SIDECAR)
    assert view.valid, view.message
    try:
        result = injection.plan(pod, "ml", lambda ns, name: view, DEFAULTS)
    except injection.Refusal as refusal:
        reason = str(refusal)
    else:
        reason = ""
    if reason:
        # Only a trial mount path that a container already uses may refuse such a pod.
        assert "already mounts volume" in reason, reason
        return
    assert result.patch is not None
    out = apply(pod, result.patch)
    assert len(sidecars(out)) == 1
    _check_whole(pod, out)
    assert injection.plan(out, "ml", lambda ns, name: view, DEFAULTS).patch is None


def _check_whole(before: dict[str, Any], after: dict[str, Any]) -> None:
    spec = after["spec"]
    assert [c["name"] for c in spec["containers"]] == [
        c["name"] for c in before["spec"]["containers"]
    ]
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
    sidecar = spec["initContainers"][-1]
    assert sidecar["name"] == names.SIDECAR_NAME
    assert sidecar["restartPolicy"] == "Always"
    requests, limits = sidecar["resources"]["requests"], sidecar["resources"]["limits"]
    for resource, amount in requests.items():
        assert quantity.parse(amount) <= quantity.parse(limits[resource])
    assert all(isinstance(e.get("value", ""), str) for e in sidecar["env"])
    status = json.loads(after["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["container"] == names.SIDECAR_NAME
