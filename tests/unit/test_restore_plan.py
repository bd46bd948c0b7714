"""What a restore takes: the units a pod owns, a checkpoint's completeness, the owner key
the webhook derives, the download lanes. Pure logic; the restores themselves run in
tests/servers and on the node (tests/pods/test_restore_on_the_node.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.pods import DEFAULTS, lookup_for
from trialsync._engine import download
from trialsync._engine.download import parts_of
from trialsync._engine.layout import MANIFEST_NAME, RESTORING_PREFIX, Layout, owner_marker
from trialsync._engine.restore import Scope, Unit, complete_files, owned_units
from trialsync._stores.base import RemoteObject
from trialsync_operator import names
from trialsync_operator.admission import injection
from trialsync_operator.admission.ownership import owner_key

A, B = owner_marker("ml/job/a"), owner_marker("ml/job/b")


def listing(*rels: str) -> dict[str, RemoteObject]:
    return {rel: RemoteObject(10, 1.0) for rel in rels}


REMOTE = listing(
    f"exp/t0/{A}",
    "exp/t0/result.json",
    "exp/t0/checkpoint_000009/model.pt",
    f"exp/t0/checkpoint_000009/{MANIFEST_NAME}",
    "exp/t0/checkpoint_000010/model.pt",
    f"exp/t1/{B}",
    "exp/t1/result.json",
    f"exp/{A}",
    "exp/experiment_state-1.json",
    "exp/tuner.pkl",
    "v2run/checkpoint_2026-01-01_00-00-00/w.pt",
    "top.txt",
    "exp/t0/../../escape",
)


def test_a_key_owns_the_dirs_holding_its_marker_and_the_head_also_their_state() -> None:
    units = owned_units(REMOTE, Layout(), Scope(key="ml/job/a", experiment_state=True))
    assert sorted(units) == ["exp", "exp/t0"]
    assert sorted(units["exp"].files) == ["exp/experiment_state-1.json", "exp/tuner.pkl"]
    trial = units["exp/t0"]
    assert sorted(trial.files) == ["exp/t0/result.json"]
    assert trial.newest_first() == ["exp/t0/checkpoint_000010", "exp/t0/checkpoint_000009"]
    assert (
        f"exp/t0/checkpoint_000009/{MANIFEST_NAME}" in trial.checkpoints["exp/t0/checkpoint_000009"]
    )


def test_a_worker_with_a_key_gets_no_experiment_state() -> None:
    units = owned_units(REMOTE, Layout(), Scope(key="ml/job/a"))
    assert sorted(units) == ["exp/t0"]  # "exp" has only state, which is the head's


def test_a_prefix_owns_every_unit_below_it_without_markers() -> None:
    assert sorted(owned_units(REMOTE, Layout(), Scope(prefix="exp"))) == ["exp/t0", "exp/t1"]
    assert sorted(owned_units(REMOTE, Layout(), Scope(prefix="exp/t1"))) == ["exp/t1"]
    everything = owned_units(REMOTE, Layout(), Scope(experiment_state=True))
    assert sorted(everything) == ["exp", "exp/t0", "exp/t1", "v2run"]  # Train V2's run dir
    assert not owned_units(REMOTE, Layout(), Scope(prefix="ex"))  # a path, not a string prefix


def test_checkpoints_are_tried_newest_first_in_numeric_order() -> None:
    unit = Unit(checkpoints={f"e/t/checkpoint_{n}": {} for n in (9, 10, 100, 2)})
    assert unit.newest_first() == [f"e/t/checkpoint_{n}" for n in (100, 10, 9, 2)]


def manifest(**files: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, "files": files}).encode()


@pytest.mark.parametrize(
    ("listed", "reason"),
    [
        ({}, "c/m.pt is missing"),
        ({"c/m.pt": RemoteObject(9, None, "x")}, "c/m.pt has 9 bytes, its manifest says 10"),
        ({"c/m.pt": RemoteObject(10, None, "y")}, "c/m.pt has checksum y, its manifest says x"),
    ],
)
def test_a_checkpoint_is_complete_only_when_every_file_matches_its_manifest(
    listed: dict[str, RemoteObject], reason: str
) -> None:
    data = manifest(**{"m.pt": {"size": 10, "mtime_ns": 5, "checksum": "x"}})
    assert complete_files("c", data, listed) == reason
    whole = {"c/m.pt": RemoteObject(10, None, "x"), "c/extra": RemoteObject(1)}
    assert complete_files("c", data, whole) == {"c/m.pt": (10, 5)}  # only what it lists
    # A store that gives no checksum is trusted on size.
    assert complete_files("c", data, {"c/m.pt": RemoteObject(10)}) == {"c/m.pt": (10, 5)}


def test_an_unreadable_or_unsafe_manifest_makes_a_checkpoint_incomplete() -> None:
    assert "unreadable" in str(complete_files("c", b"{", {}))
    unsafe = manifest(**{"../x": {"size": 1, "mtime_ns": 1}})
    assert "unsafe path" in str(complete_files("c", unsafe, {"c/../x": RemoteObject(1)}))


def test_markers_and_what_a_restore_writes_aside_are_never_synced() -> None:
    layout = Layout()
    assert layout.place(f"exp/t0/{A}") is None
    assert layout.place(f"exp/t0/{RESTORING_PREFIX}checkpoint_000001/model.pt") is None
    assert layout.place(f"exp/t0/{RESTORING_PREFIX}result.json") is None
    assert layout.checkpoint_dir(f"exp/t0/{RESTORING_PREFIX}checkpoint_000001") is None
    assert A != B
    assert len(A) == len(owner_marker("x" * 1000))


def test_ranges_cover_a_file_exactly() -> None:
    assert parts_of(0, 4) == []
    assert parts_of(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert parts_of(8, 4) == [(0, 4), (4, 8)]


def pod(labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"labels": labels or {}, **meta}}


@pytest.mark.parametrize(
    ("given", "key"),
    [
        (pod({"batch.kubernetes.io/job-name": "train"}), "ml/job/train"),
        (pod({"job-name": "train"}), "ml/job/train"),
        (
            pod(
                {"batch.kubernetes.io/job-name": "train"},
                annotations={"batch.kubernetes.io/job-completion-index": "3"},
            ),
            "ml/job/train/3",
        ),
        (
            pod(ownerReferences=[{"kind": "Job", "name": "j", "controller": True}]),
            "ml/job/j",
        ),
        (pod({"statefulset.kubernetes.io/pod-name": "trainer-1"}), "ml/statefulset/trainer-1"),
        (
            pod(
                name="trainer-0",
                ownerReferences=[{"kind": "StatefulSet", "name": "trainer", "controller": True}],
            ),
            "ml/statefulset/trainer-0",
        ),
        (pod({"ray.io/cluster": "tune", "ray.io/node-type": "head"}), "ml/raycluster/tune/head"),
        (pod({"ray.io/cluster": "tune", "ray.io/node-type": "worker"}), None),
        (pod(ownerReferences=[{"kind": "ReplicaSet", "name": "d-5f", "controller": True}]), None),
        (
            pod({"job-name": "train"}, annotations={names.RESTORE_KEY_ANNOTATION: "mine"}),
            "mine",
        ),
    ],
)
def test_the_owner_key_is_what_survives_the_pods_replacement(
    given: dict[str, Any], key: str | None
) -> None:
    assert owner_key(given, "ml") == key


CONFIG = {
    "metadata": {"name": "exp", "namespace": "ml", "uid": "u"},
    "spec": {"uploadDir": "s3://bucket/x"},
}


def job_pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {names.INJECT_LABEL: "true", "job-name": "train"},
            "annotations": {
                names.CONFIG_ANNOTATION: "exp",
                names.MOUNT_PATH_ANNOTATION: "/r",
                **annotations,
            },
        },
        "spec": {"containers": [{"name": "trainer", "image": "t"}]},
    }


def env_of(result: injection.Result) -> dict[str, str]:
    assert result.patch is not None
    (sidecar,) = [c for c in result.patch["initContainers"] if c["name"] == names.SIDECAR_NAME]
    return {e["name"]: e.get("value", "") for e in sidecar["env"]}


def test_the_pods_annotation_turns_restore_on_or_off_over_its_syncconfig() -> None:
    on = {**CONFIG, "spec": {**CONFIG["spec"], "restoreOnStart": True}}

    def env(config: dict[str, Any], restore: str | None = None) -> dict[str, str]:
        given = {names.RESTORE_ANNOTATION: restore} if restore else {}
        return env_of(injection.plan(job_pod(**given), "ml", lookup_for(config), DEFAULTS))

    assert env(on)["TRIALSYNC_RESTORE"] == "true"
    assert env(on)["TRIALSYNC_RESTORE_KEY"] == "ml/job/train"
    assert "TRIALSYNC_RESTORE" not in env(on, "false")
    assert env(CONFIG, "true")["TRIALSYNC_RESTORE"] == "true"
    assert "TRIALSYNC_RESTORE" not in env(CONFIG)


def test_a_head_serving_its_workers_has_nothing_to_restore_from_and_says_so() -> None:
    head_node = {**CONFIG, "spec": {}}
    asked = job_pod(**{names.RESTORE_ANNOTATION: "true", names.ROLE_ANNOTATION: "head"})
    result = injection.plan(asked, "ml", lookup_for(head_node), DEFAULTS)
    assert "TRIALSYNC_RESTORE" not in env_of(result)
    assert any("nothing holds a copy of it" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("annotations", "says"),
    [
        ({names.RESTORE_ANNOTATION: "yes"}, 'must be "true" or "false"'),
        ({names.RESTORE_PREFIX_ANNOTATION: "/exp"}, "must be a path below the upload dir"),
        ({names.RESTORE_PREFIX_ANNOTATION: "exp/../x"}, "must be a path below the upload dir"),
        (
            {names.RESTORE_PREFIX_ANNOTATION: "exp", names.RESTORE_KEY_ANNOTATION: "k"},
            "conflict",
        ),
    ],
)
def test_wrong_restore_annotations_are_refused_saying_which(
    annotations: dict[str, str], says: str
) -> None:
    with pytest.raises(injection.Refusal, match=says):
        injection.plan(job_pod(**annotations), "ml", lookup_for(CONFIG), DEFAULTS)


def test_a_pods_restore_its_syncconfigs_syncer_cannot_serve_is_refused_saying_why() -> None:
    # A SyncConfig asking for a restore with a custom syncer is refused when applied; a
    # pod's own annotation asking for one is refused when the pod is created, not left
    # to a sidecar that cannot start.
    custom = {
        **CONFIG,
        "spec": {
            **CONFIG["spec"],
            "syncer": "mypkg.sync:Syncer",
            "sidecar": {"image": "registry.example.com/trialsync-mypkg:1"},
        },
    }
    asked = job_pod(**{names.RESTORE_ANNOTATION: "true"})
    with pytest.raises(injection.Refusal, match="restore on start needs syncer 'auto'") as refused:
        injection.plan(asked, "ml", lookup_for(custom), DEFAULTS)
    assert names.RESTORE_ANNOTATION in str(refused.value)
    assert refused.value.reason == injection.REASON_INVALID_ANNOTATIONS
    # Without the annotation the pod is injected, with no restore.
    assert "TRIALSYNC_RESTORE" not in env_of(
        injection.plan(job_pod(), "ml", lookup_for(custom), DEFAULTS)
    )


class HeldStore:
    """Objects in memory; a read of ``held`` waits until ``release`` is set (``full`` is
    set once ``waiting`` reads of it have reached ``full_at``)."""

    def __init__(self, objects: dict[str, bytes], held: str, full_at: int) -> None:
        self.objects = objects
        self.held = held
        self.release = asyncio.Event()
        self.full = asyncio.Event()
        self.full_at = full_at
        self.waiting = 0

    def url(self, rel: str) -> str:
        return f"memory://{rel}"

    async def read_range(self, rel: str, start: int, end: int) -> bytes:
        if rel == self.held:
            self.waiting += 1
            if self.waiting == self.full_at:
                self.full.set()
            await self.release.wait()
        return self.objects[rel][start:end]


async def test_a_small_file_is_not_held_behind_a_large_files_parts(tmp_path: Path) -> None:
    part = download.SMALL_FILE
    store = HeldStore({"large": bytes(4 * part), "small": b"s" * 100}, "large", full_at=2)
    gates = download.Gates(parts=2)
    done: list[int] = []
    large = asyncio.create_task(
        download.fetch(store, "large", str(tmp_path / "large"), 4 * part, part, gates, done.append)  # type: ignore[arg-type]
    )
    await asyncio.wait_for(store.full.wait(), 5)  # every slot of the parts' lane taken
    assert gates.parts.locked()
    small = download.fetch(store, "small", str(tmp_path / "small"), 100, part, gates, done.append)  # type: ignore[arg-type]
    await asyncio.wait_for(small, 5)
    assert (tmp_path / "small").read_bytes() == b"s" * 100
    assert done == [100]
    assert not large.done()
    store.release.set()
    await large
    assert (tmp_path / "large").stat().st_size == 4 * part
    assert sorted(done) == [100] + [part] * 4
