"""keep_checkpoints against the real stores (SeaweedFS through both S3 clients, the GCS
emulator, a local dir): the newest N complete checkpoints of each trial stay, older ones
go manifest first, local files are never touched, and a restart finishes what a kill
interrupted and publishes no retired checkpoint again."""

from __future__ import annotations

import pathlib

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.engines import running_engine
from trialsync._engine.engine import Round
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._stores.fsspec_store import RemoteStore

TRIAL = "exp/trial_00000"
OTHER = "exp/trial_00001"


def ckpt(index: int, trial: str = TRIAL) -> str:
    return f"{trial}/checkpoint_{index:06d}"


def complete(backend: Backend, trial: str = TRIAL) -> list[str]:
    return sorted(
        rel.rsplit("/", 1)[0]
        for rel in backend.listing()
        if rel.startswith(trial + "/") and rel.endswith("/" + MANIFEST_NAME)
    )


def under(backend: Backend, checkpoint: str) -> set[str]:
    return {rel for rel in backend.listing() if rel.startswith(checkpoint + "/")}


def store(backend: Backend) -> RemoteStore:
    return RemoteStore(backend.url, backend.storage_options, **backend.store_options)


async def test_the_newest_n_complete_checkpoints_of_each_trial_stay(
    backend: Backend, root: pathlib.Path
) -> None:
    exp = trials.experiment(root)
    first, second = trials.trial(exp), trials.trial(exp, "trial_00001")
    async with running_engine(store(backend), root, "none", keep_checkpoints=2) as run:
        await run.engine.recover(settle=0)
        for index in range(1, 6):
            trials.checkpoint(first, index, {"model.pt": 1_000, "rng.pkl": 10})
            if index == 1:
                trials.checkpoint(second, index, {"model.pt": 1_000})
            await run.engine.run(Round(full=True), settle=0)
            kept = [ckpt(i) for i in range(max(1, index - 1), index + 1)]
            assert complete(backend) == kept
        assert run.engine.metrics.checkpoints_retired._value.get() == 3
    for index in (1, 2, 3):
        assert under(backend, ckpt(index)) == set()  # no object left behind
        assert (first / f"checkpoint_{index:06d}" / "model.pt").exists()  # local stays
    assert complete(backend, OTHER) == [ckpt(1, OTHER)]  # its only one


async def test_a_restart_finishes_an_interrupted_deletion_and_sends_nothing_retired_again(
    backend: Backend, root: pathlib.Path
) -> None:
    trial = trials.trial(trials.experiment(root))
    for index in range(1, 4):
        trials.checkpoint(trial, index, {"model.pt": 1_000, "rng.pkl": 10})
    async with running_engine(store(backend), root, "none") as run:  # no retention yet
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)
    assert complete(backend) == [ckpt(1), ckpt(2), ckpt(3)]
    # A kill after checkpoint 1's manifest went, before its objects did:
    fs = backend.reader()
    fs.rm(f"{backend._root()}/{ckpt(1)}/{MANIFEST_NAME}")
    async with running_engine(store(backend), root, "none", keep_checkpoints=1) as run:
        await run.engine.recover(settle=0)
        assert run.engine.retired == {ckpt(1)}  # its local copy is not sent again
        await run.engine.run(Round(full=True), settle=0)
        assert complete(backend) == [ckpt(3)]
        assert run.engine.retired == {ckpt(1), ckpt(2)}
        assert under(backend, ckpt(1)) == under(backend, ckpt(2)) == set()
        # A later round (a rescan) does not send the retired local checkpoints again.
        await run.engine.run(Round(full=True), settle=0)
    assert complete(backend) == [ckpt(3)]
    assert under(backend, ckpt(1)) == under(backend, ckpt(2)) == set()
    assert {p.name for p in trial.iterdir() if p.name.startswith("checkpoint_")} == {
        "checkpoint_000001",
        "checkpoint_000002",
        "checkpoint_000003",
    }


async def test_a_checkpoint_still_uploading_is_not_taken_for_an_orphan(
    backend: Backend, root: pathlib.Path
) -> None:
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 5, {"model.pt": 1_000})
    async with running_engine(store(backend), root, "none", keep_checkpoints=1) as run:
        await run.engine.recover(settle=0)
        await run.engine.run(Round(full=True), settle=0)
        # Checkpoint 3 (older) goes up but does not settle: it is pending, never an orphan.
        trials.checkpoint(trial, 3, {"model.pt": 1_000})
        run.engine.note_change(ckpt(3), is_dir=True, removed=False)
        await run.engine.run(Round(checkpoints=[ckpt(3)]), settle=600)
        run.engine.retention_due.add(TRIAL)
        await run.engine.run(Round(maintenance=True), settle=600)
        assert under(backend, ckpt(3)) == {f"{ckpt(3)}/model.pt"}
    assert complete(backend) == [ckpt(5)]
