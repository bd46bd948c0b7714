"""The publish contract on the paths that broke it: a manifest goes only over exactly what
was uploaded, and a deleted checkpoint, a bad file or an empty dir fails nothing else."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.engines import HookedStore, JournalKind, running_engine
from tests.support.fault_proxy import FaultProxy
from tests.support.privileges import drop_file_privileges
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.engine import Round
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._stores.fsspec_store import RemoteStore

MiB = 2**20
TRIAL = "exp/trial_00000"
CKPT1, CKPT2 = f"{TRIAL}/checkpoint_000001", f"{TRIAL}/checkpoint_000002"


def hooked(backend: Backend, **options: Any) -> HookedStore:
    return HookedStore(backend.url, backend.storage_options, **options)


def remote_under(backend: Backend, checkpoint: str) -> set[str]:
    return {rel for rel in backend.listing() if rel.startswith(checkpoint + "/")}


@pytest.mark.parametrize("journal", ["polling", "queued", "none"])
async def test_a_file_that_grows_after_its_upload_began_is_never_published_short(
    journal: JournalKind, s3: Backend, root: pathlib.Path
) -> None:
    # Blind spots of the journal: a poll that has not come yet (--checkpoint-settle below
    # --poll-interval), events still queued in the kernel, no journal (a final sync).
    model = trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 3 * MiB})
    model /= "model.pt"
    store = hooked(s3)

    def trainer_writes_on(rel: str) -> None:
        if rel == f"{CKPT1}/model.pt" and model.stat().st_size < 4 * MiB:
            with open(model, "ab") as handle:
                handle.write(os.urandom(MiB))

    store.after_put = trainer_writes_on
    async with running_engine(store, root, journal) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)  # everything counts as settled
        assert f"{CKPT1}/{MANIFEST_NAME}" not in s3.listing()  # 3 of 4 MiB: not published
        assert CKPT1 in run.engine.activity  # it waits to settle again
        await run.engine.run(Round(full=True), settle=0)  # the trainer is done now
    manifest = json.loads(s3.read(f"{CKPT1}/{MANIFEST_NAME}"))
    assert manifest["files"]["model.pt"]["size"] == 4 * MiB
    assert s3.read(f"{CKPT1}/model.pt") == model.read_bytes()


@pytest.mark.parametrize("mirror", [False, True], ids=["kept", "mirrored"])
@pytest.mark.parametrize("when", ["while-its-files-go-up", "after-its-files-went-up"])
async def test_a_checkpoint_deleted_mid_upload_is_not_published_and_fails_nothing_else(
    when: str, mirror: bool, s3: Backend, root: pathlib.Path
) -> None:
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 11 * MiB, "optimizer.pt": 1_000, "rng.pkl": 100})
    trials.checkpoint(trial, 2, {"model.pt": 2_000})
    store = hooked(s3, part_size=5 * MiB)

    def num_to_keep(rel: str) -> None:  # Ray deletes the checkpoint (shutil.rmtree)
        if rel in (f"{CKPT1}/model.pt", CKPT1) and (root / CKPT1).exists():
            shutil.rmtree(root / CKPT1)

    if when == "while-its-files-go-up":
        store.after_put = num_to_keep  # the largest file goes first, the others vanish
    else:
        store.after_list = num_to_keep  # the listing that verifies its uploads
    options = {"files_in_flight": 1, "part_size": 5 * MiB, "mirror_deletes": mirror}
    async with running_engine(store, root, **options) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)  # raises nothing
        assert f"{CKPT2}/{MANIFEST_NAME}" in s3.listing()  # its sibling is published
        assert f"{CKPT1}/{MANIFEST_NAME}" not in s3.listing()
        await run.caught_up()
        await run.engine.run(Round(maintenance=run.engine.maintenance_due), settle=0)
    left = remote_under(s3, CKPT1)
    if mirror:
        assert left == set()
    else:  # files stay, and no manifest vouches for them
        assert left
        assert f"{CKPT1}/{MANIFEST_NAME}" not in left


async def test_checkpoints_deleted_while_the_sidecar_was_down_go_remotely_on_restart(
    s3: Backend, root: pathlib.Path, seaweedfs: Any
) -> None:
    trial = trials.trial(trials.experiment(root))
    for index in (1, 2):
        trials.checkpoint(trial, index, {"model.pt": 1_000})
    ckpt4 = f"{TRIAL}/checkpoint_000004"
    async with running_engine(
        RemoteStore(s3.url, s3.storage_options), root, mirror_deletes=True
    ) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)
        # Checkpoint 4 is cut short by a kill: its files are sent, its manifest is not.
        trials.checkpoint(trial, 4, {"model.pt": 1_000})
        await run.caught_up()
        await run.engine.run(Round(checkpoints=[ckpt4]), settle=600)
    assert remote_under(s3, ckpt4) == {f"{ckpt4}/model.pt"}
    # This trial's checkpoint 9 as another worker left it: never on this volume.
    ckpt9 = f"{TRIAL}/checkpoint_000009"
    fs = s3.reader()
    for name in ("model.pt", MANIFEST_NAME):
        fs.pipe(f"{s3._root()}/{ckpt9}/{name}", b"{}")
    # While the sidecar is down, Ray's num_to_keep deletes checkpoints 1 and 4.
    shutil.rmtree(root / CKPT1)
    shutil.rmtree(root / ckpt4)
    async with running_engine(
        RemoteStore(s3.url, s3.storage_options), root, mirror_deletes=True
    ) as run:
        await run.engine.recover(settle=0)
        assert run.engine.maintenance_due
        await run.engine.run(Round(maintenance=True), settle=0)
    remote = s3.listing()
    assert remote_under(s3, CKPT1) == remote_under(s3, ckpt4) == set()
    assert f"{CKPT2}/{MANIFEST_NAME}" in remote
    assert remote_under(s3, ckpt9) == {f"{ckpt9}/model.pt", f"{ckpt9}/{MANIFEST_NAME}"}
    assert not any(".trialsync/" in rel for rel in remote)  # the record stays on the volume


async def test_a_file_that_shrinks_under_the_reader_fails_only_its_checkpoint_or_artifact(
    s3: Backend, root: pathlib.Path, seaweedfs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 2_000})
    trials.checkpoint(trial, 2, {"model.pt": 11 * MiB, "optimizer.pt": 1_000})
    log = trial / "events.log"
    log.write_bytes(os.urandom(50_000))
    shrinking = {f"{CKPT2}/model.pt": 4 * MiB, f"{TRIAL}/events.log": 10}
    store = hooked(s3, part_size=5 * MiB)

    def truncated(rel: str) -> None:  # after the scan, before the read
        if rel in shrinking:
            os.truncate(root / rel, shrinking.pop(rel))

    store.before_put = truncated
    async with running_engine(store, root, part_size=5 * MiB) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)  # raises nothing
        listing = s3.listing()
        assert f"{CKPT1}/{MANIFEST_NAME}" in listing
        assert f"{CKPT2}/{MANIFEST_NAME}" not in listing
        assert f"{TRIAL}/params.json" in listing
        assert f"{TRIAL}/events.log" not in listing
        failures = run.engine.metrics.registry.get_sample_value(
            "trialsync_file_failures_total", {"reason": "changed"}
        )
        assert failures == 2
        named = {r.__dict__.get("path") for r in caplog.records if r.msg == "file not uploaded"}
        assert named == {f"{CKPT2}/model.pt", f"{TRIAL}/events.log"}
        # The trainer writes them again; the next round sends both.
        (root / CKPT2 / "model.pt").write_bytes(os.urandom(11 * MiB))
        log.write_bytes(b"done\n")
        await run.caught_up()
        await run.engine.run(Round(full=True), settle=0)
    assert f"{CKPT2}/{MANIFEST_NAME}" in s3.listing()
    assert s3.read(f"{TRIAL}/events.log") == b"done\n"
    bucket = s3.url.removeprefix("s3://").split("/")[0]
    assert not seaweedfs.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_an_empty_checkpoint_dir_is_not_waited_for(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trials.trial(trials.experiment(root))
    store = RemoteStore(f"file://{tmp_path / 'remote'}")
    async with running_engine(store, root) as run:
        (root / CKPT1).mkdir()  # Ray makes the dir first, and writes into it later
        await run.caught_up()
        assert CKPT1 in run.engine.activity
        await run.engine.run(Round(checkpoints=[CKPT1], complete=frozenset({CKPT1})), settle=0)
        # Nothing to publish and nothing to wait for: the scheduler sleeps.
        assert run.engine.activity == {}
        assert run.engine.next_settle_deadline(3.0) is None
        trials.write(root / CKPT1 / "model.pt", b"weights")
        await run.caught_up()
        assert CKPT1 in run.engine.activity
        await run.engine.run(Round(checkpoints=[CKPT1], complete=frozenset({CKPT1})), settle=0)
    assert (tmp_path / "remote" / CKPT1 / MANIFEST_NAME).exists()


def test_an_unreadable_file_fails_only_its_own_checkpoint_and_artifact(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 1_000})
    trials.checkpoint(trial, 2, {"model.pt": 1_000, "optimizer.pt": 100})
    (trial / "events.log").write_bytes(b"step 1\n")
    unreadable = [f"{CKPT2}/model.pt", f"{TRIAL}/events.log"]
    for rel in unreadable:
        (root / rel).chmod(0)  # EACCES: the trainer runs as another user
    args = ["--root", str(root), "--upload-dir", s3.url, "--checkpoint-settle", "1"]
    log = str(tmp_path / "sidecar.log")
    sidecar = Sidecar.start(args, s3.env, log, wrapper=drop_file_privileges())
    sidecars.append(sidecar)
    wait_for(lambda: f"{CKPT1}/{MANIFEST_NAME}" in s3.listing(), 30, what="checkpoint 1")
    wait_for(lambda: sidecar.metric("trialsync_failed_files") == 2, 30, what="the failures")
    listing = s3.listing()
    assert f"{CKPT2}/{MANIFEST_NAME}" not in listing
    assert f"{TRIAL}/params.json" in listing
    assert f"{TRIAL}/events.log" not in listing
    assert sidecar.metric('trialsync_file_failures_total{reason="unreadable"}') >= 2
    lines = [json.loads(line) for line in sidecar.log().splitlines() if line.startswith("{")]
    reported = {e["path"] for e in lines if e.get("reason") == "unreadable"}
    assert reported == set(unreadable)
    # Someone fixes the permissions: the journal reports it, and both go up.
    for rel in unreadable:
        (root / rel).chmod(0o644)
    wait_for(lambda: f"{CKPT2}/{MANIFEST_NAME}" in s3.listing(), 30, what="checkpoint 2")
    wait_for(lambda: f"{TRIAL}/events.log" in s3.listing(), 30, what="the artifact")
    wait_for(lambda: sidecar.metric("trialsync_failed_files") == 0, 30, what="no failures")
    assert sidecar.stop() == 0


def test_a_trigger_publishes_only_the_checkpoints_that_existed_when_it_arrived(
    s3: Backend,
    root: pathlib.Path,
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    seaweedfs: Any,
) -> None:
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    # A slow link: the first checkpoint's upload is still running at the second trigger.
    with FaultProxy(upstream.hostname, upstream.port, 0, bytes_per_second=16 * MiB) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.endpoint_url, "AWS_ENDPOINT_URL_S3": proxy.endpoint_url}
        args = ["--root", str(root), "--upload-dir", s3.url, "--checkpoint-settle", "600"]
        sidecar = Sidecar.start(args, {**s3.env, **env}, str(tmp_path / "sidecar.log"))
        sidecars.append(sidecar)
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="the first sync")
        trial = trials.trial(trials.experiment(root))
        trials.checkpoint(trial, 1, {"model.pt": 24 * MiB})
        assert sidecar.post("/sync") == 202
        time.sleep(0.5)
        trials.checkpoint(trial, 2, {"model.pt": 1_000})
        assert sidecar.post("/sync") == 202  # coalesced behind checkpoint 1's upload
        ckpt3 = f"{TRIAL}/checkpoint_000003"
        growing = root / ckpt3 / "model.pt"
        stop = threading.Event()
        grower = threading.Thread(target=_grow, args=(growing, stop))
        grower.start()  # the trainer starts checkpoint 3 after its second trigger returned
        try:
            wait_for(lambda: f"{CKPT2}/{MANIFEST_NAME}" in s3.listing(), 60, what="ckpt 2")
            deadline = time.monotonic() + 2  # the coalesced run is done; watch a while more
            while time.monotonic() < deadline:
                assert f"{ckpt3}/{MANIFEST_NAME}" not in s3.listing(), "published half-written"
                time.sleep(0.1)
        finally:
            stop.set()
            grower.join()
        assert sidecar.post("/sync") == 202  # now it is complete
        wait_for(lambda: f"{ckpt3}/{MANIFEST_NAME}" in s3.listing(), 60, what="checkpoint 3")
    manifest = json.loads(s3.read(f"{ckpt3}/{MANIFEST_NAME}"))
    assert manifest["files"]["model.pt"]["size"] == growing.stat().st_size
    assert f"{CKPT1}/{MANIFEST_NAME}" in s3.listing()


def _grow(path: pathlib.Path, stop: threading.Event) -> None:
    """1 MiB every 250 ms, as the issue's trainer writes its third checkpoint."""
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:
        while not stop.is_set():
            handle.write(os.urandom(MiB))
            handle.flush()
            time.sleep(0.25)
