"""The operator's metrics and the search for missed injections, as pure logic: which pods
count as missed, the condition and its merge with the reconciler's, and what each kind of
admission adds to the injection counters (a real prometheus_client registry)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import re
from typing import Any, cast

import pytest

from tests.support.pods import SIDECAR, lookup_for, opted_in_pod, syncconfig
from trialsync_operator import kube, names
from trialsync_operator.admission import injection
from trialsync_operator.admission.review import (
    FAILURE_REASONS,
    SKIP_REASONS,
    Denied,
    PodAdmission,
    operator_metrics,
)
from trialsync_operator.metrics import Metrics
from trialsync_operator.reconcile import missed
from trialsync_operator.reconcile.reconciler import desired_status
from trialsync_operator.settings import Settings
from trialsync_operator.syncconfig import ConfigView, view_of

NOW = "2026-12-06T12:00:00Z"
LATER = "2026-12-06T12:05:00Z"


def _config(name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    body = syncconfig(name, spec)
    body["metadata"].update({"namespace": "ml", "uid": f"uid-{name}", "generation": 1, **meta})
    return body


def _views(*bodies: dict[str, Any]) -> dict[tuple[str, str], ConfigView]:
    return {view.key: view for view in (view_of(b, SIDECAR) for b in bodies)}


VIEWS = _views(
    _config("exp", {"uploadDir": "s3://bucket/exp"}),
    _config("off", {"syncer": "none"}),
    _config("bad", {"uploadDir": "abfs://container/x"}),
    _config("going", {"uploadDir": "s3://bucket/g"}, deletionTimestamp=NOW),
)


def _stored(name: str, config: str = "exp", namespace: str = "ml", **annotations: str) -> Any:
    """An opted-in pod as the apiserver stores it, admitted without a sidecar."""
    pod = opted_in_pod(name, config, **annotations)
    pod["metadata"].update({"namespace": namespace, "uid": f"uid-{name}"})
    pod["status"] = {"phase": "Pending"}
    return pod


def test_an_opted_in_live_pod_without_a_sidecar_whose_syncconfig_would_inject_it_is_missed() -> (
    None
):
    found = missed.missed_pod(_stored("a"), VIEWS)
    assert found == missed.MissedPod("ml", "a", "uid-a", "exp")


SIDECAR_CONTAINER = {"name": names.SIDECAR_NAME, "image": "x"}


def _naming(config: str) -> Any:
    return lambda p: p["metadata"]["annotations"].update({names.CONFIG_ANNOTATION: config})


@pytest.mark.parametrize(
    ("why", "edit"),
    [
        ("has the sidecar", lambda p: p["spec"].update(initContainers=[SIDECAR_CONTAINER])),
        ("not opted in", lambda p: p["metadata"].update(labels={"app": "x"})),
        ("label not true", lambda p: p["metadata"].update(labels={names.INJECT_LABEL: "false"})),
        ("succeeded", lambda p: p.update(status={"phase": "Succeeded"})),
        ("failed", lambda p: p.update(status={"phase": "Failed"})),
        ("being deleted", lambda p: p["metadata"].update(deletionTimestamp=NOW)),
        ("no such SyncConfig", _naming("ghost")),
        ("syncing disabled", _naming("off")),
        ("invalid SyncConfig", _naming("bad")),
        ("SyncConfig deleted", _naming("going")),
        ("system namespace", lambda p: p["metadata"].update(namespace="kube-system")),
    ],
)  # fmt: skip
def test_a_pod_that_recreating_would_not_inject_is_not_missed(why: str, edit: Any) -> None:
    pod = _stored("a")
    edit(pod)
    assert missed.missed_pod(pod, VIEWS) is None, why


def test_a_pod_whose_own_annotations_the_webhook_refuses_is_not_missed() -> None:
    bad = _stored("a", **{names.ROLE_ANNOTATION: "boss"})
    good = _stored("b")
    assert injection.annotations_refused(bad)
    assert not injection.annotations_refused(good)
    refused = injection.annotations_refused
    assert missed.missed_pod(bad, VIEWS, annotations_refused=refused) is None
    assert missed.missed_pod(good, VIEWS, annotations_refused=refused) is not None


def test_the_operators_own_namespace_is_left_out_when_excluded() -> None:
    pod = _stored("a", namespace="trialsync-system")
    views = _views(_config("exp", {"uploadDir": "s3://bucket/x"}, namespace="trialsync-system"))
    assert missed.missed_pod(pod, views) is not None
    assert missed.missed_pod(pod, views, excluded=("trialsync-system",)) is None


def test_the_condition_counts_and_names_the_pods_and_says_to_recreate_them() -> None:
    pods = [missed.MissedPod("ml", f"p{i}", f"u{i}", "exp") for i in range(7)]
    found = missed.condition(pods, 3, None, NOW)
    assert (found["type"], found["status"], found["reason"]) == (
        "MissedInjections",
        "True",
        "PodsWithoutSidecar",
    )
    assert found["message"].startswith("7 pod(s) opted in")
    assert "p0, p1, p2, p3, p4 and 2 more" in found["message"]
    assert "recreate" in found["message"]
    assert (found["observedGeneration"], found["lastTransitionTime"]) == (3, NOW)
    none = missed.condition([], 3, found, LATER)
    assert (none["status"], none["reason"], none["lastTransitionTime"]) == (
        "False",
        "AllInjected",
        LATER,
    )
    # The transition time moves only with the status.
    again = missed.condition(pods[:2], 3, found, LATER)
    assert again["lastTransitionTime"] == NOW
    assert not missed.same_condition(found, again)  # the count changed: written
    assert missed.same_condition(again, missed.condition(pods[:2], 3, again, LATER))


def test_the_condition_is_merged_by_type_keeping_the_others_in_place() -> None:
    ready = {"type": "Ready", "status": "True"}
    other = {"type": "Counted", "status": "True"}
    old = {"type": "MissedInjections", "status": "False"}
    new = {"type": "MissedInjections", "status": "True"}
    assert missed.merged([ready, old, other], new) == [ready, new, other]
    assert missed.merged([ready], new) == [ready, new]


def test_the_reconciler_keeps_conditions_it_does_not_own() -> None:
    view = view_of(_config("exp", {"uploadDir": "s3://bucket/exp"}), SIDECAR)
    mine = missed.condition([missed.MissedPod("ml", "a", "u", "exp")], 1, None, NOW)
    current = desired_status(view, {}, NOW)
    current["conditions"].append(mine)
    desired = desired_status(view, current, LATER)
    assert [c["type"] for c in desired["conditions"]] == ["Ready", "MissedInjections"]
    assert desired["conditions"][1] == mine
    assert desired == current  # so no status write, and no loop with the scanner


def test_the_event_message_says_what_to_do() -> None:
    message = missed.event_message(missed.MissedPod("ml", "a", "u", "exp"))
    assert "pod ml/a" in message
    assert "SyncConfig exp" in message
    assert "recreate the pod" in message


# -- the injection counters ----------------------------------------------------------------


class RecordingKube:
    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body


def _admission(on_config_error: str = "refuse", **settings: Any) -> PodAdmission:
    ready = asyncio.Event()
    ready.set()
    chosen = dataclasses.replace(Settings(), on_config_error=on_config_error, **settings)
    return PodAdmission(chosen, cast(kube.Kube, RecordingKube()), ready, operator_metrics())


def _counters(metrics: Metrics) -> dict[tuple[str, str], float]:
    """Every injection counter's value: (name, reason or "") -> value."""
    out: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("trialsync_injection_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.name, sample.labels.get("reason", "")] = sample.value
    return out


LOOKUP = lookup_for(
    _config("exp", {"uploadDir": "s3://bucket/exp"}),
    _config("off", {"syncer": "none"}),
    _config("bad", {"uploadDir": "abfs://container/x"}),
)


def _pod(config: str = "exp", **annotations: str) -> dict[str, Any]:
    pod = opted_in_pod("p", config, **annotations)
    pod["metadata"]["namespace"] = "ml"
    return pod


def _with_sidecar() -> dict[str, Any]:
    pod = _pod()
    pod["spec"]["initContainers"] = [{"name": names.SIDECAR_NAME, "image": "x"}]
    return pod


def _unlabelled() -> dict[str, Any]:
    pod = _pod()
    pod["metadata"]["labels"] = {}
    return pod


def _taken_mount_path() -> dict[str, Any]:
    """A pod whose trainer already mounts a volume at the trial data's mount path."""
    pod = _pod()
    path = pod["metadata"]["annotations"][names.MOUNT_PATH_ANNOTATION]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": path}]
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    return pod


KINDS: list[tuple[str, Any, str]] = [
    ("success", _pod, ""),
    ("skip", _with_sidecar, "already_injected"),
    ("skip", lambda: _pod("off"), "syncing_disabled"),
    ("skip", _unlabelled, "not_opted_in"),
    ("failure", lambda: _pod("ghost"), "syncconfig_missing"),
    ("failure", lambda: _pod("bad"), "syncconfig_invalid"),
    ("failure", lambda: _pod(**{names.ROLE_ANNOTATION: "boss"}), "invalid_annotations"),
    ("failure", lambda: _pod(**{names.SIDECAR_UID_ANNOTATION: "-1"}), "invalid_annotations"),
    ("failure", lambda: _taken_mount_path(), "invalid_pod"),
]


@pytest.mark.parametrize(("outcome", "make", "reason"), KINDS)
def test_each_admission_counts_one_request_and_exactly_its_outcome(
    outcome: str, make: Any, reason: str
) -> None:
    admission = _admission()
    before = _counters(admission.metrics)
    if outcome == "failure":
        with pytest.raises(Denied):
            admission.review(make(), False, LOOKUP)
    else:
        admission.review(make(), False, LOOKUP)
    after = _counters(admission.metrics)
    changed = {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if after[key] != before.get(key, 0.0)
    }
    assert changed == {
        ("trialsync_injection_requests_total", ""): 1.0,
        (f"trialsync_injection_{outcome}_total", reason): 1.0,
    }


def test_every_reason_is_exported_at_zero_from_the_start() -> None:
    counters = _counters(operator_metrics())
    for reason in SKIP_REASONS:
        assert counters["trialsync_injection_skip_total", reason] == 0.0
    for reason in FAILURE_REASONS:
        assert counters["trialsync_injection_failure_total", reason] == 0.0


def test_admit_mode_counts_a_config_error_as_a_skip_with_its_reason() -> None:
    admission = _admission("admit")
    admission.review(_pod("ghost"), True, LOOKUP)
    admission.review(_pod(**{names.ROLE_ANNOTATION: "boss"}), True, LOOKUP)
    counters = _counters(admission.metrics)
    assert counters["trialsync_injection_skip_total", "syncconfig_missing"] == 1.0
    assert counters["trialsync_injection_skip_total", "invalid_annotations"] == 1.0
    assert counters["trialsync_injection_failure_total", "syncconfig_missing"] == 0.0


def test_refusals_before_the_injection_count_their_reasons() -> None:
    admission = _admission(namespaces=("other",))
    with pytest.raises(Denied):
        admission.review(_pod(), False, LOOKUP)
    admission.index_ready.clear()
    with pytest.raises(Denied):
        admission.review(_pod(), False, LOOKUP)
    counters = _counters(admission.metrics)
    assert counters["trialsync_injection_failure_total", "namespace_not_watched"] == 1.0
    assert counters["trialsync_injection_failure_total", "operator_starting"] == 1.0
    assert counters["trialsync_injection_requests_total", ""] == 2.0


def test_the_leader_gauge_follows_leadership_at_each_scrape() -> None:
    metrics = Metrics()
    leading = [False]
    metrics.follow_leadership(lambda: leading[0])
    assert b"trialsync_operator_leader 0.0" in metrics.render()
    leading[0] = True
    assert b"trialsync_operator_leader 1.0" in metrics.render()


def test_the_docs_table_names_every_metric_the_operator_serves_and_every_reason() -> None:
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {re.match(r"\| `([a-z_]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]
    served = set()
    for family in operator_metrics().registry.collect():
        served.add(family.name + ("_total" if family.type == "counter" else ""))
    assert documented == served
    for reason in (*SKIP_REASONS, *FAILURE_REASONS):
        assert f"`{reason}`" in section, reason


def test_kopfs_line_for_each_pod_event_is_dropped_and_its_failures_kept() -> None:
    from trialsync_operator.kopf_adapter import runner

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, (), None)

    assert not runner.quiet_pod_events(record(logging.INFO, "Handler 'opted-in-pods' succeeded."))
    assert runner.quiet_pod_events(record(logging.ERROR, "Handler 'opted-in-pods' failed"))
    assert runner.quiet_pod_events(record(logging.INFO, "Handler 'reconcile' succeeded."))


async def test_a_status_without_the_condition_wakes_the_leaders_scan_and_only_then() -> None:
    scanner = missed.MissedInjections(
        cast(kube.Kube, RecordingKube()), Settings(), operator_metrics()
    )
    scanner.status_seen({})
    assert not scanner._wake.is_set()  # not leading: nothing to do
    scanner._leading = True
    scanner.status_seen({"conditions": [{"type": "MissedInjections", "status": "False"}]})
    assert not scanner._wake.is_set()
    scanner.status_seen({"conditions": [{"type": "Ready", "status": "True"}]})
    assert scanner._wake.is_set()
