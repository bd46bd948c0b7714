"""Restore on start, on every store: a pod's fresh volume gets back its trials' newest
complete checkpoints and trial files before the sidecar is ready, and none of it is sent
again."""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import pytest

from localcluster.processes import free_port
from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.sidecar_process import Sidecar, run_once, wait_for
from trialsync._engine.layout import MANIFEST_NAME, RESTORING_PREFIX, owner_marker

TOKEN = "test-token-1234"
TRIAL = "exp/trial_00000"


def start(
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    name: str,
    target: list[str],
    env: dict[str, str],
    *flags: str,
) -> tuple[Sidecar, pathlib.Path]:
    """A sidecar on the (maybe new) root ``tmp_path/name``, ready."""
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    args = ["--root", str(root), *target, "--checkpoint-settle", "1", *flags]
    sidecar = Sidecar.start(args, env, str(tmp_path / f"{name}-{time.monotonic_ns()}.log"))
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 60, what=f"{name} ready")
    return sidecar, root


def published(sidecar: Sidecar, count: int) -> None:
    wait_for(
        lambda: sidecar.metric("trialsync_checkpoints_published_total") >= count,
        60,
        what=f"{count} checkpoints published",
    )


def saved(
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    target: list[str],
    env: dict[str, str],
    checkpoints: int,
    *flags: str,
) -> pathlib.Path:
    """A first pod's sidecar that published checkpoints 1..``checkpoints`` of TRIAL and
    stopped (exit 0); its root."""
    first, root = start(tmp_path, sidecars, "first", target, env, *flags)
    train(root, TRIAL, range(1, checkpoints + 1))
    published(first, checkpoints)
    assert first.stop() == 0
    return root


def train(root: pathlib.Path, trial: str, indexes: range) -> None:
    trial_dir = trials.trial(root / trial.split("/")[0], trial.split("/")[1])
    for index in indexes:
        trials.checkpoint(trial_dir, index, {"model.pt": 300_000, "sub/optim.pt": 70_000})


def test_a_retried_pod_gets_its_newest_checkpoint_back_and_sends_none_of_it_again(
    backend: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", backend.url]
    first, first_root = start(
        tmp_path, sidecars, "first", target, backend.env, "--restore", "--restore-key", "job/a"
    )
    train(first_root, TRIAL, range(1, 4))
    published(first, 3)
    other, other_root = start(
        tmp_path, sidecars, "other", target, backend.env, "--restore", "--restore-key", "job/b"
    )
    train(other_root, "exp/trial_00001", range(1, 2))
    published(other, 1)
    assert first.stop() == 0
    assert other.stop() == 0
    before = backend.listing()
    assert f"{TRIAL}/{owner_marker('job/a')}" in before

    retry, root = start(
        tmp_path, sidecars, "retry", target, backend.env, "--restore", "--restore-key", "job/a"
    )
    restored = trials.relative_files(root)
    wanted = {
        rel: data
        for rel, data in trials.relative_files(first_root).items()
        if rel.startswith(TRIAL) and "/checkpoint_000001/" not in rel
        if "/checkpoint_000002/" not in rel
    }
    assert restored == wanted  # the newest checkpoint and the trial files, of job/a only
    checkpoint = f"{TRIAL}/checkpoint_000003/model.pt"
    assert (root / checkpoint).stat().st_mtime_ns == (first_root / checkpoint).stat().st_mtime_ns
    assert retry.metric("trialsync_restored_bytes_total") == sum(map(len, wanted.values()))
    assert retry.metric("trialsync_restored_files_total") == len(wanted)
    # Restored means synced: the ledger starts with it, nothing goes up again.
    trials.checkpoint(root / TRIAL, 4, {"model.pt": 1000})
    published(retry, 1)
    assert retry.metric("trialsync_uploaded_bytes_total") == 1000
    assert retry.stop() == 0
    after = backend.listing()
    assert {k: v for k, v in after.items() if "checkpoint_000004" not in k} == before


def test_once_syncs_what_is_there_and_says_it_ignores_restore(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url]
    saved(tmp_path, sidecars, target, s3.env, 1)
    root = tmp_path / "once"
    train(root, "exp/trial_00001", range(1, 2))
    old = time.time() - 60  # settled: --once publishes it
    for path in root.rglob("*"):
        os.utime(path, (old, old))
    code, out = run_once(["--root", str(root), *target, "--restore"], s3.env)
    assert code == 0, out
    assert "restore on start ignored with --once" in out
    assert not (root / TRIAL).exists()  # nothing restored
    assert f"exp/trial_00001/checkpoint_000001/{MANIFEST_NAME}" in s3.listing()


def test_a_checkpoint_without_its_manifest_or_with_a_wrong_file_is_passed_over(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url]
    saved(tmp_path, sidecars, target, s3.env, 3, "--restore")
    fs = s3.reader()
    base = s3.url.removeprefix("s3://")
    fs.rm(f"{base}/{TRIAL}/checkpoint_000003/{MANIFEST_NAME}")  # never published whole
    fs.pipe(f"{base}/{TRIAL}/checkpoint_000002/model.pt", b"truncated")  # changed since

    retry, root = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert sorted(p.name for p in (root / TRIAL).glob("checkpoint_*")) == ["checkpoint_000001"]
    log = retry.log()
    assert "it has no manifest" in log
    assert "checkpoint_000003" in log
    assert "has 9 bytes, its manifest says 300000" in log


def test_a_worker_restores_from_the_head_node_service(
    tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    head_root = tmp_path / "head"
    head_root.mkdir()
    port = free_port()
    head_args = ["--role", "head", "--root", str(head_root), "--receiver-addr", f"127.0.0.1:{port}"]
    sidecars.append(Sidecar.start(head_args, {"TRIALSYNC_HEAD_TOKEN": TOKEN}, str(tmp_path / "h")))
    target = ["--head-url", f"http://127.0.0.1:{port}"]

    def env(name: str) -> dict[str, str]:
        return {
            "TRIALSYNC_HEAD_TOKEN": TOKEN,
            "TRIALSYNC_HEAD_IDENTITY_FILE": str(tmp_path / f"{name}-scratch" / "identity.json"),
        }

    key = ("--restore", "--restore-key", "ns/statefulset/trainer-0")
    # The first worker's exit releases its claim on the trial dir.
    first_root = saved(tmp_path, sidecars, target, env("first"), 2, *key)

    retry, root = start(tmp_path, sidecars, "retry", target, env("retry"), *key)
    newest = f"{TRIAL}/checkpoint_000002"
    assert sorted(p.name for p in (root / TRIAL).glob("checkpoint_*")) == ["checkpoint_000002"]
    assert trials.relative_files(root / newest) == trials.relative_files(first_root / newest)
    trials.checkpoint(root / TRIAL, 3, {"model.pt": 1000})
    published(retry, 1)
    assert retry.metric("trialsync_uploaded_bytes_total") == 1000
    assert (head_root / TRIAL / "checkpoint_000003" / MANIFEST_NAME).exists()


def test_a_prefix_restores_every_trial_below_it_and_the_head_gets_its_experiment_state(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url, "--role", "head", "--sync-period", "1"]
    first, first_root = start(tmp_path, sidecars, "first", target, s3.env)
    trials.experiment(first_root)
    train(first_root, "exp/trial_00000", range(1, 2))
    train(first_root, "exp/trial_00001", range(1, 3))
    train(first_root, "other/trial_00000", range(1, 2))
    published(first, 4)
    state = "exp/experiment_state-2026-01-01.json"
    wait_for(lambda: state in s3.listing(), 20, what="the experiment state")
    assert first.stop() == 0

    _, root = start(
        tmp_path, sidecars, "retry", target, s3.env, "--restore", "--restore-prefix", "exp"
    )
    assert (root / state).read_bytes() == (first_root / state).read_bytes()
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/checkpoint_*")) == [
        "exp/trial_00000/checkpoint_000001",
        "exp/trial_00001/checkpoint_000002",
    ]
    assert not (root / "other").exists()


def test_a_restore_that_cannot_finish_in_its_timeout_fails_with_a_clear_message(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()  # nothing listens: every attempt fails, and is retried
    args = [
        "--root", str(root), "--upload-dir", "s3://bucket/exp", "--restore",
        "--restore-timeout", "6", "--max-backoff", "1",
        "--storage-option", f"endpoint_url=http://127.0.0.1:{port}",
    ]  # fmt: skip
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    sidecar = Sidecar(args, env, str(tmp_path / "log"))
    try:
        code = sidecar.proc.wait(60)
    finally:
        sidecar.stop()
    log = sidecar.log()
    assert code == 1, log
    assert "the restore did not finish within restore_timeout=6 s" in log
    assert "Connect call failed" in log or "Cannot connect" in log  # the warnings say why


@pytest.mark.parametrize("flags", [("--restore-key", "a", "--restore-prefix", "exp")])
def test_a_key_and_a_prefix_together_are_refused(
    flags: tuple[str, ...], tmp_path: pathlib.Path
) -> None:
    from tests.support.sidecar_process import run_once

    code, out = run_once(
        ["--root", str(tmp_path), "--upload-dir", "file:///x", "--restore", *flags], {}
    )
    assert code == 2
    assert "give --restore-key" in out


def test_nothing_left_aside_survives_the_next_restore(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url]
    saved(tmp_path, sidecars, target, s3.env, 1)
    root = tmp_path / "retry"
    aside = root / TRIAL / f"{RESTORING_PREFIX}checkpoint_000001"
    trials.write(aside / "model.pt", b"half")  # what a killed restore left
    start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert not aside.exists()
    assert (root / TRIAL / "checkpoint_000001" / "model.pt").stat().st_size == 300_000


def test_a_restored_checkpoint_that_lost_its_writes_is_restored_again(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    """A node that went down before a restore's writes reached its disk leaves, on a
    volume that outlives it, a checkpoint shorter than its manifest."""
    target = ["--upload-dir", s3.url]
    first_root = saved(tmp_path, sidecars, target, s3.env, 2)
    restored, root = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert restored.stop() == 0
    model = root / TRIAL / "checkpoint_000002" / "model.pt"
    model.write_bytes(b"")  # what ext4 or XFS shows of a file whose data never landed
    again, _ = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert (
        model.read_bytes() == (first_root / TRIAL / "checkpoint_000002" / "model.pt").read_bytes()
    )
    assert "shorter than its manifest" in again.log()
    # A whole one is left as it is: nothing is downloaded.
    assert again.stop() == 0
    third, _ = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert third.metric("trialsync_restored_bytes_total") == 0


def test_mirrored_deletions_reach_a_restored_checkpoint_and_never_older_ones(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url, "--mirror-deletes"]
    saved(tmp_path, sidecars, target, s3.env, 3)
    retry, root = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    # The trainer goes on and, as Ray's num_to_keep=1 does, deletes the one it resumed from.
    trials.checkpoint(root / TRIAL, 4, {"model.pt": 1000})
    published(retry, 1)
    shutil.rmtree(root / TRIAL / "checkpoint_000003")
    wait_for(
        lambda: not any("checkpoint_000003" in rel for rel in s3.listing()),
        30,
        what="the restored checkpoint's deletion mirrored",
    )
    assert retry.stop() == 0
    checkpoints = {rel.split("/")[2] for rel in s3.listing() if "/checkpoint_" in rel}
    assert checkpoints == {"checkpoint_000001", "checkpoint_000002", "checkpoint_000004"}


def test_the_metrics_say_how_long_the_restore_took_and_how_much_training_is_at_risk(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    target = ["--upload-dir", s3.url]
    saved(tmp_path, sidecars, target, s3.env, 1)
    retry, root = start(tmp_path, sidecars, "retry", target, s3.env, "--restore")
    assert retry.metric("trialsync_restore_seconds") > 0
    # Nothing published since the start: the window grows with the time since then.
    time.sleep(2)
    before = retry.metric("trialsync_data_loss_window_seconds")
    assert before >= 2
    trials.checkpoint(root / TRIAL, 2, {"model.pt": 1000})
    published(retry, 1)
    assert retry.metric("trialsync_data_loss_window_seconds") < before
