"""The sync contract on every backend: first upload, no-op, change, publish, restart."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager as AsyncContextManager

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.engines import RunningEngine, running_engine
from trialsync._engine.engine import Round, SyncEngine
from trialsync._engine.layout import MANIFEST_NAME, Kind
from trialsync._stores.base import RemoteObject
from trialsync._stores.fsspec_store import RemoteStore

ALL = frozenset({Kind.EXPERIMENT, Kind.ARTIFACT})


class SpyStore(RemoteStore):
    """The real store, recording each remote operation in order: ``calls`` as each
    completes (a read or a listing as it starts), ``events`` as each begins and ends, and
    what each listing returned."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend.url, backend.storage_options, **backend.store_options)
        self.calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []  # (operation, "begin" or "end", rel)
        self.listed: dict[str, dict[str, RemoteObject]] = {}

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        self.events.append(("put", "begin", rel))
        await super().put_file(local_path, rel, size)
        self.events.append(("put", "end", rel))
        self.calls.append(("put", rel))

    async def put_bytes(self, rel: str, data: bytes) -> None:
        self.events.append(("put_bytes", "begin", rel))
        await super().put_bytes(rel, data)
        self.events.append(("put_bytes", "end", rel))
        self.calls.append(("put_bytes", rel))

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        self.calls.append(("list", rel_prefix))
        self.events.append(("list", "begin", rel_prefix))
        listing = await super().list(rel_prefix)
        self.events.append(("list", "end", rel_prefix))
        self.listed[rel_prefix] = listing
        return listing

    async def read_bytes(self, rel: str) -> bytes:
        self.calls.append(("read", rel))
        return await super().read_bytes(rel)

    async def delete(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        await super().delete(rels)
        self.calls.extend(("delete", rel) for rel in rels)


def engine_on(backend: Backend, root: pathlib.Path) -> AsyncContextManager[RunningEngine]:
    """A real engine on the backend, fed by a real inotify journal of ``root``."""
    return running_engine(SpyStore(backend), root)


def spy(engine: SyncEngine) -> SpyStore:
    assert isinstance(engine.store, SpyStore)
    return engine.store


async def synced(engine: SyncEngine) -> None:
    """Rebuild the ledger and sync everything once, then forget the calls it made."""
    await engine.recover(settle=0)
    await engine.run(Round(full=True), settle=0)
    spy(engine).calls.clear()


async def restarted(backend: Backend, root: pathlib.Path) -> tuple[list[tuple[str, str]], set[str]]:
    """A new process over ``root``: recover, sync everything once; (its calls, published)."""
    async with engine_on(backend, root) as run:
        engine = run.engine
        await engine.recover(settle=0)
        await engine.run(Round(full=True), settle=0)
        return spy(engine).calls, set(engine.ledger.published)


def make_tree(root: pathlib.Path) -> None:
    exp = trials.experiment(root)
    trial = trials.trial(exp)
    trials.checkpoint(trial, 1, {"model.pt": 300_000, "optimizer.pt": 1_000})
    trials.checkpoint(trial, 2, {"model.pt": 300_000})


async def test_first_sync_mirrors_the_local_layout(backend: Backend, root: pathlib.Path) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        engine = run.engine
        await engine.recover(settle=0)
        await engine.run(Round(full=True), settle=0)
    local = trials.relative_files(root)
    remote = backend.listing()
    assert {rel: len(data) for rel, data in local.items()}.items() <= remote.items()
    for rel, data in local.items():
        assert backend.read(rel) == data
    manifests = {rel for rel in remote if rel.endswith(MANIFEST_NAME)}
    assert manifests == {f"exp/trial_00000/checkpoint_00000{i}/{MANIFEST_NAME}" for i in (1, 2)}
    assert set(remote) == set(local) | manifests  # nothing else, no directory markers


async def test_no_op_sync_uploads_and_lists_nothing(backend: Backend, root: pathlib.Path) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        engine = run.engine
        await synced(engine)
        for _ in range(3):
            await engine.run(Round(kinds=ALL), settle=0)
        assert spy(engine).calls == []


async def test_a_change_uploads_only_the_changed_file(backend: Backend, root: pathlib.Path) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        engine = run.engine
        await synced(engine)
        result = root / "exp/trial_00000/result.json"
        result.write_bytes(b'{"loss": 0.5}\n')
        await run.caught_up()
        await engine.run(Round(kinds=ALL), settle=0)
        assert spy(engine).calls == [("put", "exp/trial_00000/result.json")]
    assert backend.read("exp/trial_00000/result.json") == b'{"loss": 0.5}\n'


async def test_checkpoint_is_published_marker_last(backend: Backend, root: pathlib.Path) -> None:
    trial = trials.trial(trials.experiment(root))
    async with engine_on(backend, root) as run:
        engine = run.engine
        await synced(engine)
        files = {"model.pt": 2_000_000, "rng.pkl": 10, "extra/state.bin": 50_000}
        trials.checkpoint(trial, 3, files)
        await run.caught_up()
        loop_now = asyncio.get_running_loop().time()
        checkpoint = "exp/trial_00000/checkpoint_000003"
        assert engine.settled_checkpoints(loop_now + 10, settle=5) == [checkpoint]
        await engine.run(
            Round(checkpoints=[checkpoint], complete=frozenset({checkpoint})), settle=5
        )
        calls = spy(engine).calls
    manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
    assert calls[-1] == ("put_bytes", manifest_rel)  # the marker is the last write
    assert sorted(rel for op, rel in calls if op == "put") == sorted(
        f"{checkpoint}/{name}" for name in files
    )
    # The marker's write began only after every file's upload had ended and a listing of
    # the checkpoint had returned each file whole (its full size).
    events = spy(engine).events
    marker_begins = events.index(("put_bytes", "begin", manifest_rel))
    for name in files:
        assert events.index(("put", "end", f"{checkpoint}/{name}")) < marker_begins, name
    assert events.index(("list", "end", checkpoint)) < marker_begins
    listed = spy(engine).listed[checkpoint]
    assert {rel: obj.size for rel, obj in listed.items()} == {
        f"{checkpoint}/{name}": size for name, size in files.items()
    }
    manifest = json.loads(backend.read(manifest_rel))
    # The format the README states.
    assert manifest.keys() == {"version", "checkpoint", "published_at", "total_bytes", "files"}
    assert (manifest["version"], manifest["checkpoint"]) == (1, checkpoint)
    assert {name: entry["size"] for name, entry in manifest["files"].items()} == files
    assert manifest["total_bytes"] == sum(files.values())
    for name, entry in manifest["files"].items():
        assert entry.keys() == {"size", "mtime_ns", "checksum"}
        assert entry["mtime_ns"] == (root / checkpoint / name).stat().st_mtime_ns


async def test_restart_rebuilds_the_ledger_from_one_listing_and_the_manifests(
    backend: Backend, root: pathlib.Path
) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        await synced(run.engine)
    # A new process: nothing in memory, everything already remote. It lists the
    # experiment dir (which holds local state files) and reads each published
    # checkpoint's manifest, which vouches for its files; it uploads nothing.
    calls, published = await restarted(backend, root)
    checkpoints = [f"exp/trial_00000/checkpoint_00000{i}" for i in (1, 2)]
    assert calls[0] == ("list", "exp")
    assert sorted(calls[1:]) == [("read", f"{c}/{MANIFEST_NAME}") for c in checkpoints]
    assert published == set(checkpoints)


async def test_a_worker_lists_only_its_own_trials(backend: Backend, tmp_path: pathlib.Path) -> None:
    first, second = tmp_path / "worker-0", tmp_path / "worker-1"
    for root, name in ((first, "trial_00000"), (second, "trial_00001")):
        trials.checkpoint(trials.trial(root / "exp", name), 1, {"model.pt": 1_000})
        async with engine_on(backend, root) as run:
            await synced(run.engine)
    # The second worker restarts: it lists its own trial, not the first worker's.
    calls, published = await restarted(backend, second)
    manifest = f"exp/trial_00001/checkpoint_000001/{MANIFEST_NAME}"
    assert calls == [("list", "exp/trial_00001"), ("read", manifest)]
    assert published == {"exp/trial_00001/checkpoint_000001"}
    assert len(backend.listing()) == 2 * 5  # 3 artifacts, a checkpoint file, its manifest


async def test_a_trial_restored_after_start_loses_its_old_manifest_first(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    first, second = tmp_path / "worker-0", tmp_path / "worker-1"
    trials.checkpoint(trials.trial(first / "exp"), 4, {"model.pt": 1_000})
    async with engine_on(backend, first) as run:
        engine = run.engine
        await synced(engine)
    manifest_rel = f"exp/trial_00000/checkpoint_000004/{MANIFEST_NAME}"
    # A new worker starts empty; the trial then lands on it and writes checkpoint 4 anew.
    second.mkdir()
    async with engine_on(backend, second) as run:
        engine = run.engine
        await synced(engine)
        trials.checkpoint(trials.trial(second / "exp"), 4, {"model.pt": 2_000})
        await run.caught_up()
        checkpoint = "exp/trial_00000/checkpoint_000004"
        await engine.run(
            Round(checkpoints=[checkpoint], complete=frozenset({checkpoint})), settle=0
        )
        calls = spy(engine).calls
    first_put = next(i for i, call in enumerate(calls) if call[0] == "put")
    assert ("delete", manifest_rel) in calls[:first_put]  # withdrawn before any file changed
    assert calls[-1] == ("put_bytes", manifest_rel)
    manifest = json.loads(backend.read(manifest_rel))
    assert manifest["files"]["model.pt"]["size"] == 2_000


async def test_a_checkpoint_without_manifest_is_sent_again_and_published_after_restart(
    backend: Backend, root: pathlib.Path
) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        engine = run.engine
        await synced(engine)
    # Simulate a crash between the last file and the marker: without a manifest nothing
    # says the remote bytes are the local ones, so the checkpoint goes up again.
    checkpoint = "exp/trial_00000/checkpoint_000002"
    manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
    backend.reader().rm(f"{backend._root()}/{manifest_rel}")
    calls, _ = await restarted(backend, root)
    writes = [c for c in calls if c[0] in ("put", "put_bytes")]
    assert writes == [("put", f"{checkpoint}/model.pt"), ("put_bytes", manifest_rel)]
    assert manifest_rel in backend.listing()


async def test_a_checkpoint_file_rewritten_in_place_while_down_is_sent_again(
    backend: Backend, root: pathlib.Path
) -> None:
    make_tree(root)
    async with engine_on(backend, root) as run:
        await synced(run.engine)
    # While the sidecar is down the trainer rewrites a published file: same size, and an
    # mtime a nanosecond on, so the remote copy is still "not older" to the second.
    checkpoint = "exp/trial_00000/checkpoint_000001"
    model = root / checkpoint / "optimizer.pt"
    before = model.stat()
    model.write_bytes(b"x" * before.st_size)
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    calls, published = await restarted(backend, root)
    manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
    writes = [c for c in calls if c[0] in ("put", "put_bytes", "delete")]
    # The manifest says another mtime: withdrawn, the file sent again, published again.
    assert writes == [
        ("delete", manifest_rel),
        ("put", f"{checkpoint}/optimizer.pt"),
        ("put_bytes", manifest_rel),
    ]
    assert backend.read(f"{checkpoint}/optimizer.pt") == model.read_bytes()
    listed = json.loads(backend.read(manifest_rel))["files"]["optimizer.pt"]
    assert listed["mtime_ns"] == before.st_mtime_ns + 1
    assert checkpoint in published


async def test_a_manifest_removed_by_someone_else_does_not_fail_later_rounds(
    backend: Backend, root: pathlib.Path
) -> None:
    make_tree(root)
    checkpoint = "exp/trial_00000/checkpoint_000001"
    manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
    async with engine_on(backend, root) as run:
        await synced(run.engine)
        # A lifecycle rule (or a person) deletes the manifest; then the trainer adds a file.
        backend.reader().rm(f"{backend._root()}/{manifest_rel}")
        trials.write(root / checkpoint / "extra.pt", b"later")
        await run.caught_up()
        for _ in range(2):  # withdrawing the missing manifest is no error, now or later
            await run.engine.run(
                Round(checkpoints=[checkpoint], complete=frozenset({checkpoint})), settle=0
            )
        assert checkpoint in run.engine.ledger.published
    assert set(json.loads(backend.read(manifest_rel))["files"]) == {
        "model.pt",
        "optimizer.pt",
        "extra.pt",
    }
