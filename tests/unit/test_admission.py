"""The admission decision around the injection: refused by default, or admitted unmodified
with a warning and an Event (``--on-config-error admit``); never before the index is read."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import pytest

from tests.support.pods import lookup_for
from trialsync_operator import kube, names
from trialsync_operator.admission.review import SIDECAR_NOT_INJECTED, Denied, PodAdmission
from trialsync_operator.settings import Settings


class RecordingKube:
    """Stands in for ``kube.Kube``: records what is created."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((path, body))
        return body


def _admission(on_config_error: str = "refuse") -> tuple[PodAdmission, RecordingKube]:
    client = RecordingKube()
    settings = dataclasses.replace(Settings(), on_config_error=on_config_error)
    ready = asyncio.Event()
    ready.set()
    return PodAdmission(settings, cast(kube.Kube, client), ready), client


def _pod(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ml",
            "labels": {names.INJECT_LABEL: "true"},
            "annotations": {
                names.CONFIG_ANNOTATION: "missing",
                names.MOUNT_PATH_ANNOTATION: "/root/ray_results",
            },
            **meta,
        },
        "spec": {"containers": [{"name": "trainer", "image": "t"}]},
    }


async def test_a_pod_naming_a_missing_syncconfig_is_refused_by_default() -> None:
    admission, client = _admission()
    with pytest.raises(Denied, match=r"SyncConfig ml/missing .* does not exist"):
        admission.review(_pod(name="p"), False, lookup_for())
    await admission.settled()
    assert client.created == []


async def test_admit_mode_admits_unmodified_with_a_warning_and_an_event_on_the_pod() -> None:
    admission, client = _admission("admit")
    warnings = admission.review(_pod(name="p"), False, lookup_for()).warnings
    await admission.settled()
    assert len(warnings) == 1
    assert "no sidecar injected" in warnings[0]
    assert "ml/missing" in warnings[0]
    ((path, event),) = client.created
    assert path == "/api/v1/namespaces/ml/events"
    assert event["type"] == "Warning"
    assert event["reason"] == SIDECAR_NOT_INJECTED
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "namespace": "ml",
    }
    assert "ml/missing" in event["message"]


async def test_admit_mode_records_the_event_on_the_controller_of_a_pod_with_no_name() -> None:
    admission, client = _admission("admit")
    owners = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "1"},
        {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "2", "controller": True},
    ]
    admission.review(_pod(generateName="train-", ownerReferences=owners), False, lookup_for())
    await admission.settled()
    ((_, event),) = client.created
    assert event["involvedObject"]["kind"] == "Job"
    assert event["involvedObject"]["name"] == "train"


async def test_admit_mode_records_no_event_on_a_dry_run() -> None:
    admission, client = _admission("admit")
    warnings = admission.review(_pod(name="p"), True, lookup_for()).warnings
    await admission.settled()
    assert warnings
    assert client.created == []


async def test_no_pod_is_admitted_before_the_index_holds_every_syncconfig() -> None:
    admission, _ = _admission("admit")
    admission.index_ready.clear()
    with pytest.raises(Denied, match="is starting") as refused:
        admission.review(_pod(name="p"), False, lambda ns, name: None)
    assert refused.value.code == 503
