"""The operator's side of the pods' sync status, as pure logic: a sidecar's document read
defensively, the counts, the newest and oldest across pods, the Synced condition, and a
status written only when it changed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trialsync_operator import kube, names
from trialsync_operator.reconcile import pod_status
from trialsync_operator.reconcile.pod_status import Report, aggregate, desired_status, unchanged


def _doc(state: str, **fields: Any) -> dict[str, Any]:
    return {"version": 1, "state": state, **fields}


@pytest.mark.parametrize(
    "document",
    [None, [], "synced", {}, {"state": "great"}, {"state": 1}],
)
def test_a_document_it_does_not_understand_is_unknown(document: object) -> None:
    assert pod_status.report_of(document).state == "unknown"


def test_a_document_is_read_without_trusting_its_types() -> None:
    report = pod_status.report_of(
        _doc(
            "lagging",
            newest_checkpoint={"path": "e/t/checkpoint_1", "published_at": 100.5},
            oldest_unsynced={"path": "e/t/checkpoint_2", "since": "yesterday"},
            failure_reason=None,
        )
    )
    assert report == Report("lagging", newest=("e/t/checkpoint_1", 100.5), oldest=None)


def test_counts_newest_oldest_and_a_failing_condition() -> None:
    reports = {
        "a": Report("synced", newest=("e/a/checkpoint_3", 300.0)),
        "b": Report("lagging", newest=("e/b/checkpoint_9", 200.0), oldest=("e/b/c_10", 50.0)),
        "c": Report("failing", oldest=("e/c/checkpoint_1", 40.0), reason="credentials"),
        "d": Report("unknown"),
        "e": Report("starting"),
    }
    fields = aggregate(reports, "s3://bucket/x/", 300)
    assert fields["pods"] == {
        "total": 5,
        "synced": 1,
        "lagging": 1,
        "failing": 1,
        "starting": 1,
        "unknown": 1,
    }
    assert fields["newestCheckpoint"] == {
        "pod": "a",
        "path": "e/a/checkpoint_3",
        "publishedAt": "1970-01-01T00:05:00Z",
        "url": "s3://bucket/x/e/a/checkpoint_3",
    }
    assert fields["oldestUnsynced"] == {
        "pod": "c",
        "path": "e/c/checkpoint_1",
        "since": "1970-01-01T00:00:40Z",
    }
    status, reason, message = fields["condition"]
    assert (status, reason) == ("False", "Failing")
    assert message == "1 of 5 pod(s) fail to sync (credentials): c; 1 lagging"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], ("True", "NoPods")),
        (["synced", "synced"], ("True", "Synced")),
        (["synced", "unknown"], ("True", "Synced")),
        (["starting", "unknown"], ("Unknown", "NotReported")),
        (["synced", "lagging"], ("False", "Lagging")),
        (["lagging", "failing"], ("False", "Failing")),
    ],
)
def test_the_synced_condition(states: list[str], expected: tuple[str, str]) -> None:
    fields = aggregate({f"p{i}": Report(s) for i, s in enumerate(states)}, None, 10)
    assert fields["condition"][:2] == expected
    assert fields["newestCheckpoint"] is None


def test_the_status_is_written_only_when_it_changed_and_keeps_other_conditions() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Valid", "message": "m"}
    fields = aggregate({"a": Report("synced")}, None, 10)
    first = desired_status(fields, {"conditions": [ready]}, "2026-01-01T00:00:00Z")
    assert first["conditions"][0] == ready
    synced = first["conditions"][1]
    assert synced["type"] == pod_status.SYNCED
    assert synced["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    # Later, the same pods: the same status, the transition time kept: nothing to write.
    current: dict[str, Any] = {**first, "observedGeneration": 3}
    again = desired_status(fields, current, "2026-01-02T00:00:00Z")
    assert unchanged(again, current)
    # A pod lags: the status differs, and the condition's transition time moves.
    lagging = aggregate({"a": Report("lagging")}, None, 10)
    changed = desired_status(lagging, current, "2026-01-03T00:00:00Z")
    assert not unchanged(changed, current)
    assert changed["conditions"][1]["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_the_watch_keeps_only_injected_pods() -> None:
    injected = {
        "metadata": {"namespace": "ml", "name": "p", "labels": {names.CONFIG_LABEL: "exp"}},
        "status": {"podIP": "10.0.0.7", "phase": "Running"},
    }
    assert pod_status.pod_of(injected) == pod_status.Pod("ml", "p", "exp", "10.0.0.7", False)
    assert pod_status.pod_of({"metadata": {"name": "q", "labels": {}}}) is None
    done = {**injected, "status": {"phase": "Succeeded"}}
    assert pod_status.pod_of(done) == pod_status.Pod("ml", "p", "exp", None, True)


class _Conflicting:
    """An API that refuses the first status write (someone wrote since the version the
    poller holds) and then serves the object as it is now."""

    def __init__(self) -> None:
        self.current = {
            "metadata": {"namespace": "ml", "name": "exp", "resourceVersion": "7"},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready"}]},
        }
        self.writes: list[str] = []
        self.reads = 0

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        version = patch["metadata"]["resourceVersion"]
        self.writes.append(version)
        if version != self.current["metadata"]["resourceVersion"]:
            raise kube.ApiError(409, "the object has been modified")
        return {"metadata": {"resourceVersion": "8"}, "status": patch["status"]}

    async def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        assert params == {"fieldSelector": "metadata.name=exp"}
        self.reads += 1
        return {"items": [self.current]}


def test_a_conflicting_write_is_retried_over_the_object_read_again() -> None:
    api = _Conflicting()
    poller = pod_status.PodStatus(api)  # type: ignore[arg-type]
    tracked = pod_status.Tracked(
        "ml", "exp", 10, None, {"observedGeneration": 1}, resource_version="5", generation=1
    )
    poller.configs[("ml", "exp")] = tracked
    assert asyncio.run(poller.poll(tracked)) is True
    assert api.writes == ["5", "7"]  # the stale version refused, then the one read again
    assert api.reads == 1
    # The reconciler's condition, read again, is kept beside the new Synced one.
    types = [c["type"] for c in tracked.status["conditions"]]
    assert types == ["Ready", pod_status.SYNCED]
    assert tracked.resource_version == "8"


def _config(name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "resourceVersion": "1"}, "spec": {}}


def test_a_resync_forgets_only_the_syncconfigs_its_listing_could_hold() -> None:
    poller = pod_status.PodStatus(None)  # type: ignore[arg-type]
    poller.observe(_config("kept"))
    poller.observe(_config("deleted"))
    listed_at = poller.mark()
    poller.observe(_config("kept"))  # the resync reconciles what it listed
    poller.observe(_config("created"))  # created while the resync went through the others
    poller.retain([("ml", "kept")], listed_at)
    assert set(poller.configs) == {("ml", "kept"), ("ml", "created")}
