"""What a SyncConfig's status says (pure: the view, the facts the reconciler learnt, the
status before), and which pods count as users of its head-node service."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.pods import SIDECAR
from trialsync_operator import names
from trialsync_operator.reconcile import in_use
from trialsync_operator.reconcile.reconciler import Facts, desired_status
from trialsync_operator.syncconfig import view_of

NOW = "2026-12-06T12:00:00Z"


def _view(spec: dict[str, Any], deleted: bool = False) -> Any:
    meta: dict[str, Any] = {"name": "team", "namespace": "ml", "uid": "u1", "generation": 2}
    if deleted:
        meta["deletionTimestamp"] = NOW
    return view_of({"metadata": meta, "spec": spec}, SIDECAR)


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_missing_credentials_secret_makes_ready_false_saying_what_pods_meet() -> None:
    view = _view({"uploadDir": "s3://bucket/x", "credentials": {"secretRef": {"name": "keys"}}})
    ready = _conditions(desired_status(view, {}, NOW, Facts(secret_missing=True)))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "SecretMissing")
    assert "Secret ml/keys" in ready["message"]
    assert "ContainerCreating" in ready["message"]
    assert _conditions(desired_status(view, {}, NOW))["Ready"]["status"] == "True"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"uploadDir": "abfs://container/x"}, "SchemeNotServed"),
        ({"uploadDir": "file:///x"}, "PathNotWritable"),
        ({"syncPeriod": 0}, "InvalidSpec"),
    ],
)
def test_an_invalid_spec_gives_ready_false_with_its_reason(
    spec: dict[str, Any], reason: str
) -> None:
    ready = _conditions(desired_status(_view(spec), {}, NOW))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", reason)


def test_a_deleted_syncconfig_names_the_pods_it_waits_for_and_keeps_its_service() -> None:
    view = _view({}, deleted=True)
    status = desired_status(view, {}, NOW, Facts(head_users=("head-0", "worker-1")))
    ready = _conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Terminating")
    assert "head-0, worker-1" in ready["message"]
    assert status["headService"] == names.head_service_name("team")
    retained = _conditions(status)["HeadServiceRetained"]
    assert (retained["status"], retained["reason"]) == ("True", "PodsInUse")


def test_a_change_of_mode_keeps_the_head_service_while_pods_use_it() -> None:
    view = _view({"uploadDir": "s3://bucket/x"})
    status = desired_status(view, {}, NOW, Facts(head_users=tuple(f"w{i}" for i in range(8))))
    conditions = _conditions(status)
    assert conditions["Ready"]["status"] == "True"  # new pods sync to the bucket
    assert "8 pod(s)" in conditions["HeadServiceRetained"]["message"]
    assert "and 3 more" in conditions["HeadServiceRetained"]["message"]
    assert status["headService"] == names.head_service_name("team")
    # Once they are gone, neither the condition nor the Service is wanted.
    after = desired_status(view, status, NOW)
    assert "HeadServiceRetained" not in _conditions(after)
    assert "headService" not in after


def test_a_conditions_transition_time_moves_only_with_its_status() -> None:
    view = _view({})
    first = desired_status(view, {}, "2026-01-01T00:00:00Z")
    again = desired_status(view, first, NOW)
    assert _conditions(again)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    deleted = desired_status(_view({}, deleted=True), first, NOW)
    assert _conditions(deleted)["Ready"]["lastTransitionTime"] == NOW


def _pod(name: str, phase: str = "Running", **status: Any) -> dict[str, Any]:
    injected = {"uid": "u1", "mode": "head", **status}
    return {
        "metadata": {
            "name": name,
            "annotations": {names.STATUS_ANNOTATION: json.dumps(injected)},
        },
        "status": {"phase": phase},
    }


def test_only_live_pods_injected_for_this_head_service_count_as_its_users() -> None:
    pods = [
        _pod("live"),
        _pod("pending", phase="Pending"),
        _pod("done", phase="Succeeded"),
        _pod("failed", phase="Failed"),
        _pod("upload-mode", mode="upload"),
        _pod("predecessor", uid="u0"),
        _pod("earlier-operator", mode=None),
        {"metadata": {"name": "not-injected"}},
        {"metadata": {"name": "bad", "annotations": {names.STATUS_ANNOTATION: "{"}}},
    ]
    pods[6]["metadata"]["annotations"][names.STATUS_ANNOTATION] = json.dumps({"uid": "u1"})
    assert in_use.head_users(pods, "u1") == ("earlier-operator", "live", "pending")


def test_the_finalizer_patches_add_to_any_list_and_remove_only_their_own_entry() -> None:
    assert in_use.add_finalizer([]) == [
        {"op": "add", "path": "/metadata/finalizers", "value": [in_use.FINALIZER]}
    ]
    assert in_use.add_finalizer(["other"])[0]["path"] == "/metadata/finalizers/-"
    ops = in_use.remove_finalizer(["other", in_use.FINALIZER])
    assert ops == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": in_use.FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]


def test_the_pods_synced_condition_is_kept_as_the_reconciler_finds_it() -> None:
    """pod_status writes Synced; the reconciler's merge patch replaces the whole list, so
    it carries Synced over unchanged (else each would undo the other's write)."""
    view = _view({"uploadDir": "s3://bucket/x"})
    synced = {"type": "Synced", "status": "False", "reason": "Lagging", "message": "2 of 3"}
    first = desired_status(view, {"conditions": [synced]}, NOW)
    assert [c["type"] for c in first["conditions"]] == ["Ready", "Synced"]
    assert _conditions(first)["Synced"] == synced
    assert desired_status(view, first, NOW) == first
