"""Seed scenario 3: workers sync their trial dirs to the head node's service."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import pytest

from localcluster.processes import free_port
from tests.support import trials
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.layout import MANIFEST_NAME

TOKEN = "test-token-1234"
TRIAL = "exp/trial_00000"
CKPT = f"{TRIAL}/checkpoint_000001"


@pytest.fixture
def head_sidecar(tmp_path: pathlib.Path, sidecars: list[Sidecar]) -> tuple[str, pathlib.Path]:
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
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    head_url: str,
    *flags: str,
    name: str = "worker",
    ready: bool = True,
) -> tuple[Sidecar, pathlib.Path]:
    """A worker sidecar syncing ``tmp_path/name`` to the head; its identity kept in its own
    scratch dir, so a restart with the same ``name`` is the same worker."""
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    args = ["--root", str(root), "--head-url", head_url, "--checkpoint-settle", "1", *flags]
    env = {
        "TRIALSYNC_HEAD_TOKEN": TOKEN,
        "TRIALSYNC_HEAD_IDENTITY_FILE": str(tmp_path / f"{name}-scratch" / "identity.json"),
    }
    sidecar = Sidecar.start(args, env, str(tmp_path / f"{name}.log"))
    sidecars.append(sidecar)
    if ready:
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 20, what="the worker's first sync")
    return sidecar, root


def identity_of(tmp_path: pathlib.Path, name: str) -> str:
    """The id a worker registered as."""
    kept = json.loads((tmp_path / f"{name}-scratch" / "identity.json").read_bytes())
    return str(kept["identity"]).rpartition(".")[0]


def test_worker_syncs_its_trial_dir_to_the_head_every_period(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head_sidecar
    _, root = worker(tmp_path, sidecars, head_url, "--sync-period", "1")
    trial = trials.trial(root / "exp")
    result = head_root / TRIAL / "result.json"
    wait_for(result.exists, 5, what="the trial dir")  # files land one by one, each atomically
    (trial / "result.json").write_bytes(b'{"loss": 0.1}\n')
    wait_for(lambda: result.read_bytes() == b'{"loss": 0.1}\n', 5, what="the next periodic sync")


def test_sync_on_checkpoint_forces_a_sync_to_the_head(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head_sidecar
    _, root = worker(tmp_path, sidecars, head_url, "--sync-period", "3600")
    trial = trials.trial(root / "exp")
    written = time.monotonic()
    trials.checkpoint(trial, 1, {"model.pt": 500_000})
    wait_for(lambda: (head_root / CKPT / MANIFEST_NAME).exists(), 240, what="the checkpoint")
    # Within a minute on a busy machine (the wait allows four), not the 3600 s period.
    assert time.monotonic() - written < 60
    assert (head_root / CKPT / "model.pt").read_bytes() == (root / CKPT / "model.pt").read_bytes()
    assert (head_root / TRIAL / "params.json").exists()  # the whole trial dir went with it


def test_without_sync_on_checkpoint_a_checkpoint_waits_for_the_period(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    # The period is long, so nothing periodic can happen during the test however busy the
    # machine; that the deferred checkpoint goes at the next period is proven on a fake
    # clock (tests/unit/test_scheduler.py), and here it goes with the final sync.
    head_url, head_root = head_sidecar
    sidecar, root = worker(
        tmp_path, sidecars, head_url, "--sync-period", "3600", "--no-sync-on-checkpoint"
    )
    trials.checkpoint(trials.trial(root / "exp"), 1, {"model.pt": 1_000})
    time.sleep(2)  # settled long ago (0.3 s), and no periodic sync since
    assert not (head_root / CKPT / MANIFEST_NAME).exists(), "the checkpoint forced a sync"
    assert sidecar.stop() == 0
    assert (head_root / CKPT / MANIFEST_NAME).exists()


def test_a_worker_with_the_wrong_token_reports_failures_and_writes_nothing(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head_sidecar
    root = tmp_path / "worker"
    trials.trial(root / "exp")
    args = ["--root", str(root), "--head-url", head_url, "--sync-period", "1"]
    sidecar = Sidecar.start(args, {"TRIALSYNC_HEAD_TOKEN": "wrong"}, str(tmp_path / "w.log"))
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.metric("trialsync_sync_failures_total") >= 1, 10, what="a failure")
    assert sidecar.get("/readyz")[0] == 503
    assert "401" in sidecar.log()
    assert not any(head_root.rglob("*.json"))


def contend(
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    head_sidecar: tuple[str, pathlib.Path],
    more: Callable[[pathlib.Path], object] = lambda _: None,
) -> tuple[Sidecar, Sidecar]:
    """A first worker that synced TRIAL, then a second one whose root holds a stale trial of
    the same name (a misconfigured or stale pod), and what ``more`` adds to that root."""
    head_url, head_root = head_sidecar
    first, first_root = worker(tmp_path, sidecars, head_url, "--sync-period", "1", name="first")
    trials.trial(first_root / "exp")
    wait_for((head_root / TRIAL / "result.json").exists, 10, what="the first worker's trial")
    second_root = tmp_path / "second"
    trials.write(second_root / TRIAL / "result.json", b'{"loss": "stale"}\n')
    more(second_root)
    flags = ("--sync-period", "1", "--max-backoff", "1")
    second, _ = worker(tmp_path, sidecars, head_url, *flags, name="second", ready=False)
    return first, second


def test_a_trial_dir_another_worker_holds_is_refused_until_that_worker_exits(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    first, second = contend(tmp_path, sidecars, head_sidecar)
    wait_for(lambda: second.metric("trialsync_head_refusals_total") >= 1, 15, what="a refusal")
    log = second.log()
    assert f"{TRIAL}/result.json: trial dir {TRIAL} is claimed by" in log
    assert identity_of(tmp_path, "first") in log
    result = head_sidecar[1] / TRIAL / "result.json"
    assert result.read_bytes() == b'{"loss": 1.0}\n'
    # SIGTERM: the first worker's final sync, then it releases its claims.
    assert first.stop() == 0
    stale = b'{"loss": "stale"}\n'
    wait_for(lambda: result.read_bytes() == stale, 15, what="the second worker's sync")


def test_a_restarted_worker_sidecar_keeps_its_identity_and_its_trial_dirs(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    head_url, head_root = head_sidecar
    first, root = worker(tmp_path, sidecars, head_url, "--sync-period", "1", name="first")
    trial = trials.trial(root / "exp")
    result = head_root / TRIAL / "result.json"
    wait_for(result.exists, 10, what="the trial dir")
    registered_as = identity_of(tmp_path, "first")
    first.proc.kill()  # a crash: no final sync, claims not released
    first.stop()
    (trial / "result.json").write_bytes(b'{"loss": 0.5}\n')
    again, _ = worker(tmp_path, sidecars, head_url, "--sync-period", "1", name="first")
    wait_for(lambda: result.read_bytes() == b'{"loss": 0.5}\n', 10, what="the restarted sync")
    assert identity_of(tmp_path, "first") == registered_as
    assert again.metric("trialsync_head_refusals_total") == 0


def test_one_refused_trial_dir_does_not_hold_up_the_workers_other_trial_dirs(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], head_sidecar: tuple[str, pathlib.Path]
) -> None:
    def another_trial(root: pathlib.Path) -> None:
        trials.checkpoint(trials.trial(root / "exp", "trial_00001"), 1, {"model.pt": 10_000})

    contend(tmp_path, sidecars, head_sidecar, another_trial)
    published = head_sidecar[1] / "exp" / "trial_00001" / "checkpoint_000001" / MANIFEST_NAME
    wait_for(published.exists, 15, what="the other trial's checkpoint")
