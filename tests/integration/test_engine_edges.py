"""Hard cases for the engine: races with the trainer, lost events, recreated checkpoints."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import time

import pytest

from tests.support import trials
from trialsync import scanner, watcher
from trialsync.engine import EngineOptions, Round, SyncEngine
from trialsync.layout import MANIFEST_NAME
from trialsync.metrics import Metrics
from trialsync.store import RemoteStore

CKPT = "exp/trial_00000/checkpoint_000001"


class TrainerWritesDuringUpload(RemoteStore):
    """A real local-file store; on its first upload the 'trainer' adds a file."""

    def __init__(self, url: str, late_file: pathlib.Path) -> None:
        super().__init__(url)
        self.late_file = late_file
        self.wrote = False

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        if not self.wrote:
            self.wrote = True
            self.late_file.write_bytes(b"written while the upload ran")
            await asyncio.sleep(0.2)  # the journal reports it meanwhile
        await super().put_file(local_path, rel, size)


async def engine_for(
    root: pathlib.Path, store: RemoteStore
) -> tuple[SyncEngine, watcher.InotifyJournal]:
    engine = SyncEngine(EngineOptions(root=str(root)), store, Metrics())
    journal = watcher.InotifyJournal(str(root))
    await journal.start(engine.note_change, engine.note_overflow)
    return engine, journal


async def test_a_file_added_during_upload_postpones_the_manifest(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    trial = trials.trial(root / "exp")
    checkpoint = trials.checkpoint(trial, 1, {"model.pt": 10_000})
    store = TrainerWritesDuringUpload(f"file://{remote}", checkpoint / "late.pt")
    engine, journal = await engine_for(root, store)
    try:
        await engine.recover(settle=0)
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), settle=0)
        assert not (remote / CKPT / MANIFEST_NAME).exists()
        assert CKPT in engine.activity  # still pending
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), settle=0)
    finally:
        journal.close()
    assert (remote / CKPT / MANIFEST_NAME).exists()
    assert (remote / CKPT / "late.pt").read_bytes() == b"written while the upload ran"


async def test_a_checkpoint_recreated_under_its_name_drops_its_old_files(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    trial = trials.trial(root / "exp")
    trials.checkpoint(trial, 1, {"a.pt": 100, "b.pt": 100})
    trials.checkpoint(trial, 10, {"keep.pt": 100})  # a sibling whose name extends it
    engine, journal = await engine_for(root, RemoteStore(f"file://{remote}"))
    try:
        await engine.recover(settle=0)
        await engine.run(Round(full=True), settle=0)
        shutil.rmtree(root / CKPT)
        trials.checkpoint(trial, 1, {"a.pt": 200})
        await asyncio.sleep(0.2)
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), settle=0)
    finally:
        journal.close()
    assert sorted(p.name for p in (remote / CKPT).iterdir()) == [MANIFEST_NAME, "a.pt"]
    assert (remote / "exp/trial_00000/checkpoint_000010/keep.pt").exists()


async def test_a_file_that_vanishes_before_its_upload_does_not_fail_the_sync(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    trial = trials.trial(root / "exp")
    engine, journal = await engine_for(root, RemoteStore(f"file://{remote}"))
    try:
        await engine.recover(settle=0)
        await engine.run(Round(full=True), settle=0)
        temp = trial / "result.json.tmp"
        temp.write_bytes(b"x")
        await asyncio.sleep(0.2)
        temp.unlink()
        engine.dirty.add("exp/trial_00000/result.json.tmp")  # as if seen before the unlink
        await engine.run(Round(full=True), settle=0)
    finally:
        journal.close()
    assert not (remote / "exp/trial_00000/result.json.tmp").exists()


async def test_after_an_inotify_overflow_new_directories_are_watched_again(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    remote = tmp_path / "remote"
    trials.trial(root / "exp")
    engine, journal = await engine_for(root, RemoteStore(f"file://{remote}"))
    loop = asyncio.get_running_loop()
    try:
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
        await asyncio.sleep(0.2)
        assert "exp/trial_00001/checkpoint_000001" in engine.activity
    finally:
        journal.close()


async def test_polling_reports_new_and_removed_directories(root: pathlib.Path) -> None:
    seen: list[tuple[str, bool, bool]] = []
    journal = watcher.PollingJournal(str(root), interval=0.05)
    await journal.start(lambda rel, d, r: seen.append((rel, d, r)), lambda: None)
    try:
        await asyncio.sleep(0.1)
        trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 10})
        await asyncio.sleep(0.2)
        assert (CKPT, True, False) in seen
        shutil.rmtree(root / CKPT)
        await asyncio.sleep(0.2)
        assert (CKPT, True, True) in seen
        assert (f"{CKPT}/model.pt", False, True) in seen
    finally:
        journal.close()


async def test_out_of_inotify_watches_falls_back_to_polling(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches(self: watcher.InotifyJournal, rel: str) -> None:
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
    trial = trials.trial(root / "exp")
    checkpoint = trials.checkpoint(trial, 1, {"model.pt": 10_000})
    real_scan = scanner.scan

    def scan_then_trainer_writes(base: str, under: str = "") -> dict[str, tuple[int, int]]:
        found = real_scan(base, under)
        if under == CKPT and not (checkpoint / "late.pt").exists():
            (checkpoint / "late.pt").write_bytes(b"after the scan")
            time.sleep(0.2)  # the loop reads the event while the scan thread still runs
        return found

    monkeypatch.setattr(scanner, "scan", scan_then_trainer_writes)
    engine, journal = await engine_for(root, RemoteStore(f"file://{remote}"))
    try:
        await engine.recover(settle=0)
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), settle=0)
        assert not (remote / CKPT / MANIFEST_NAME).exists()  # the manifest would have lied
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), settle=0)
    finally:
        journal.close()
    assert (remote / CKPT / "late.pt").exists()
    assert (remote / CKPT / MANIFEST_NAME).exists()
