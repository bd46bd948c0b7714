"""Hard cases for the engine: races with the trainer, lost events, recreated checkpoints."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
from collections.abc import Callable

import pytest

from tests.support import trials
from tests.support.engines import HookedStore, running_engine
from trialsync._engine import scanner, watcher
from trialsync._engine.engine import PublishError, Round
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._stores.fsspec_store import RemoteStore

CKPT = "exp/trial_00000/checkpoint_000001"
NOW = Round(checkpoints=[CKPT], complete=frozenset({CKPT}))  # as a trigger asks


def local_store(tmp_path: pathlib.Path) -> HookedStore:
    return HookedStore(f"file://{tmp_path / 'remote'}", {})


async def test_a_file_added_during_upload_postpones_the_manifest(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    checkpoint = trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 10_000})
    late = checkpoint / "late.pt"
    store = local_store(tmp_path)
    store.before_put = lambda rel: None if late.exists() else late.write_bytes(b"late")
    async with running_engine(store, root) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(NOW, settle=0)
        assert not (remote / CKPT / MANIFEST_NAME).exists()
        assert CKPT in run.engine.activity  # still pending
        await run.engine.run(NOW, settle=0)
    assert (remote / CKPT / MANIFEST_NAME).exists()
    assert (remote / CKPT / "late.pt").read_bytes() == b"late"


async def test_a_file_the_store_loses_after_its_upload_is_uploaded_again_at_the_retry(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # On the head node, the driver may delete a checkpoint dir while it arrives (Tune's
    # num_to_keep); a store may lose an object too. The retry must not trust the ledger.
    remote = tmp_path / "remote"
    trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 1000, "state.json": 11})
    store = local_store(tmp_path)
    lost: list[str] = []

    def lose_once(rel: str) -> None:
        if not lost:
            lost.append(rel)
            (remote / rel).unlink()

    store.after_put = lose_once
    async with running_engine(store, root) as run:
        await run.engine.recover(settle=0)
        with pytest.raises(PublishError, match="found missing"):
            await run.engine.run(NOW, settle=0)
        assert not (remote / CKPT / MANIFEST_NAME).exists()
        await run.engine.run(NOW, settle=0)
    assert len(lost) == 1
    assert (remote / lost[0]).stat().st_size == (root / lost[0]).stat().st_size
    assert (remote / CKPT / MANIFEST_NAME).exists()


async def test_a_checkpoint_recreated_under_its_name_drops_its_old_files(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    trial = trials.trial(root / "exp")
    trials.checkpoint(trial, 1, {"a.pt": 100, "b.pt": 100})
    trials.checkpoint(trial, 10, {"keep.pt": 100})  # a sibling whose name extends it
    async with running_engine(local_store(tmp_path), root) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)
        shutil.rmtree(root / CKPT)
        trials.checkpoint(trial, 1, {"a.pt": 200})
        await run.caught_up()
        await run.engine.run(NOW, settle=0)
    assert sorted(p.name for p in (remote / CKPT).iterdir()) == [MANIFEST_NAME, "a.pt"]
    assert (remote / "exp/trial_00000/checkpoint_000010/keep.pt").exists()


async def test_a_file_that_vanishes_between_its_stat_and_its_upload_fails_nothing(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trial = trials.trial(root / "exp")
    temp = trial / "result.json.tmp"
    store = local_store(tmp_path)
    async with running_engine(store, root) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)
        temp.write_bytes(b"x")  # the trainer's temp file, renamed a moment later
        (trial / "result.json").write_bytes(b'{"loss": 0.5}\n')
        await run.caught_up()
        # It is stat'ed with the other changed files, then gone when its upload opens it.
        store.before_put = lambda rel: temp.unlink() if rel.endswith(".tmp") else None
        await run.engine.run(Round(full=True), settle=0)
        vanished = run.engine.metrics.registry.get_sample_value(
            "trialsync_file_failures_total", {"reason": "vanished"}
        )
        assert vanished == 1  # the vanish path was taken
        await run.caught_up()  # its deletion
        await run.engine.run(Round(full=True), settle=0)
        assert run.engine.dirty == set()  # nothing left to retry
    remote = tmp_path / "remote" / "exp/trial_00000"
    assert not (remote / "result.json.tmp").exists()
    assert (remote / "result.json").read_bytes() == b'{"loss": 0.5}\n'  # the rest went up


async def test_after_an_inotify_overflow_new_directories_are_watched_again(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trials.trial(root / "exp")
    loop = asyncio.get_running_loop()
    async with running_engine(local_store(tmp_path), root) as run:
        engine, journal = run.engine, run.journal
        assert isinstance(journal, watcher.InotifyJournal)
        await engine.recover(settle=0)
        # Lose the events of a new trial dir, as a full kernel queue would.
        loop.remove_reader(journal._fd)
        new_trial = trials.trial(root / "exp", "trial_00001")
        while True:
            try:
                os.read(journal._fd, 1 << 20)
            except BlockingIOError:
                break
        loop.add_reader(journal._fd, journal._read)
        journal._handle(-1, 0x4000, "")  # IN_Q_OVERFLOW
        await journal.catch_up()  # the tree is watched again, then a rescan is due
        assert engine.rescan_needed
        await engine.run(Round(maintenance=True), settle=0)
        assert "exp/trial_00001/params.json" in engine.dirty  # found by the rescan
        trials.checkpoint(new_trial, 1, {"model.pt": 100})  # seen: the dir is watched again
        await journal.catch_up()
        assert "exp/trial_00001/checkpoint_000001" in engine.activity


async def test_polling_reports_new_and_removed_directories(root: pathlib.Path) -> None:
    seen: list[tuple[str, bool, bool]] = []
    journal = watcher.PollingJournal(str(root), interval=3600)  # polled by catch_up only
    await journal.start(lambda rel, d, r: seen.append((rel, d, r)), lambda: None)
    try:
        trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 10})
        await journal.catch_up()
        assert (CKPT, True, False) in seen
        shutil.rmtree(root / CKPT)
        await journal.catch_up()
        assert (CKPT, True, True) in seen
        assert (f"{CKPT}/model.pt", False, True) in seen
    finally:
        journal.close()


async def test_out_of_inotify_watches_falls_back_to_polling(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches(self: watcher.InotifyJournal, rel: str, collect: bool) -> None:
        raise watcher.InotifyUnavailable(28, "inotify_add_watch: No space left on device")

    monkeypatch.setattr(watcher.InotifyJournal, "_watch_tree", no_watches)
    journal = await watcher.start_journal(str(root), 0.05, lambda *_: None, lambda: None)
    try:
        assert isinstance(journal, watcher.PollingJournal)
    finally:
        journal.close()


async def test_a_file_added_while_the_checkpoint_is_scanned_postpones_the_manifest(
    root: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    checkpoint = trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 10_000})
    real_scan: Callable[..., dict[str, tuple[int, int]]] = scanner.scan

    def scan_then_trainer_writes(base: str, under: str = "") -> dict[str, tuple[int, int]]:
        found = real_scan(base, under)
        if under == CKPT and not (checkpoint / "late.pt").exists():
            (checkpoint / "late.pt").write_bytes(b"after the scan")
        return found

    monkeypatch.setattr(scanner, "scan", scan_then_trainer_writes)
    async with running_engine(RemoteStore(f"file://{remote}"), root) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(NOW, settle=0)
        assert not (remote / CKPT / MANIFEST_NAME).exists()  # the manifest would have lied
        await run.engine.run(NOW, settle=0)
    assert (remote / CKPT / "late.pt").exists()
    assert (remote / CKPT / MANIFEST_NAME).exists()


async def test_catching_up_reports_changes_whose_events_are_still_in_the_kernel(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # What a trigger does first: the trainer wrote its checkpoint, then called POST /sync,
    # and the loop may not have read those events yet.
    async with running_engine(local_store(tmp_path), root) as run:
        trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 10})
        assert CKPT not in run.engine.activity  # no await yet: nothing was read
        await run.caught_up()
        assert CKPT in run.engine.activity
