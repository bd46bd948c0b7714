"""Seed scenario 3: workers sync their trial dirs to the head node's service."""

from __future__ import annotations

import pathlib
import time

import pytest

from tests.support import trials
from tests.support.processes import free_port
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync.layout import MANIFEST_NAME

TOKEN = "test-token-1234"
TRIAL = "exp/trial_00000"
CKPT = f"{TRIAL}/checkpoint_000001"


@pytest.fixture
def head(tmp_path: pathlib.Path, sidecars: list[Sidecar]) -> tuple[str, pathlib.Path]:
    """A head sidecar with no upload dir: it serves the head-node service."""
    root = tmp_path / "head"
    root.mkdir()
    port = free_port()
    args = ["--role", "head", "--root", str(root), "--receiver-addr", f"127.0.0.1:{port}"]
    sidecar = Sidecar.start(args, {"TRIALSYNC_HEAD_TOKEN": TOKEN}, str(tmp_path / "head.log"))
    sidecars.append(sidecar)
    url = f"http://127.0.0.1:{port}"
    return url, root


def worker(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_url: str, *flags: str
) -> tuple[Sidecar, pathlib.Path]:
    root = tmp_path / "worker"
    root.mkdir(exist_ok=True)
    args = ["--root", str(root), "--head-url", head_url, "--checkpoint-settle", "0.3", *flags]
    sidecar = Sidecar.start(args, {"TRIALSYNC_HEAD_TOKEN": TOKEN}, str(tmp_path / "worker.log"))
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 20, what="the worker's first sync")
    return sidecar, root


def test_worker_syncs_its_trial_dir_to_the_head_every_period(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head
    _, root = worker(tmp_path, sidecars, head_url, "--sync-period", "1")
    trial = trials.trial(root / "exp")
    result = head_root / TRIAL / "result.json"
    wait_for(result.exists, 5, what="the trial dir")  # files land one by one, each atomically
    (trial / "result.json").write_bytes(b'{"loss": 0.1}\n')
    wait_for(lambda: result.read_bytes() == b'{"loss": 0.1}\n', 5, what="the next periodic sync")


def test_sync_on_checkpoint_forces_a_sync_to_the_head(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head
    _, root = worker(tmp_path, sidecars, head_url, "--sync-period", "3600")
    trial = trials.trial(root / "exp")
    written = time.monotonic()
    trials.checkpoint(trial, 1, {"model.pt": 500_000})
    wait_for(lambda: (head_root / CKPT / MANIFEST_NAME).exists(), 10, what="the checkpoint")
    assert time.monotonic() - written < 5  # not the 3600 s period
    assert (head_root / CKPT / "model.pt").read_bytes() == (root / CKPT / "model.pt").read_bytes()
    assert (head_root / TRIAL / "params.json").exists()  # the whole trial dir went with it


def test_without_sync_on_checkpoint_a_checkpoint_waits_for_the_period(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head
    sidecar, root = worker(
        tmp_path, sidecars, head_url, "--sync-period", "4", "--no-sync-on-checkpoint"
    )
    trial = trials.trial(root / "exp")
    trials.checkpoint(trial, 1, {"model.pt": 1_000})
    time.sleep(1.5)  # settled long ago, but no periodic sync since
    published_early = (head_root / CKPT / MANIFEST_NAME).exists()
    wait_for(lambda: (head_root / CKPT / MANIFEST_NAME).exists(), 8, what="the periodic sync")
    assert not published_early, "the checkpoint forced a sync with sync_on_checkpoint off"
    assert sidecar.metric("trialsync_checkpoints_published_total") == 1


def test_a_worker_with_the_wrong_token_reports_failures_and_writes_nothing(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head
    root = tmp_path / "worker"
    trials.trial(root / "exp")
    args = ["--root", str(root), "--head-url", head_url, "--sync-period", "1"]
    sidecar = Sidecar.start(args, {"TRIALSYNC_HEAD_TOKEN": "wrong"}, str(tmp_path / "w.log"))
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.metric("trialsync_sync_failures_total") >= 1, 10, what="a failure")
    assert sidecar.get("/readyz")[0] == 503
    assert "401" in sidecar.log()
    assert not any(head_root.rglob("*.json"))
