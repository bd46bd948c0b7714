"""Each seed parameter proven on the real sidecar process against a real S3 server."""

from __future__ import annotations

import json
import pathlib
import shutil
import threading
import time

import pytest

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.sidecar_process import Sidecar, run_once, wait_for
from trialsync._engine.layout import MANIFEST_NAME

CKPT = "exp/trial_00000/checkpoint_000001"
MANIFEST = f"{CKPT}/{MANIFEST_NAME}"


def endpoint(url: str) -> dict[str, str]:
    """Point every S3 client at ``url`` (AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL)."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, "S3_ENDPOINT_URL": url}


def start(
    sidecars: list[Sidecar],
    tmp_path: pathlib.Path,
    root: pathlib.Path,
    backend: Backend,
    *flags: str,
    env: dict[str, str] | None = None,
) -> Sidecar:
    log = str(tmp_path / f"sidecar-{len(sidecars)}.log")
    args = ["--root", str(root), "--upload-dir", backend.url, "--log-level", "debug", *flags]
    sidecar = Sidecar.start(args, {**backend.env, **(env or {})}, log)
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="first successful sync")
    return sidecar


def test_head_syncs_experiment_state_periodically_never_more_often_than_the_period(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    # The exact timing (a sync at 0, 300, 600 s ...) is proven on a fake clock in
    # tests/unit/test_scheduler.py; here, the real process on a busy machine.
    period = 1.0
    exp = trials.experiment(root)
    state = exp / "experiment_state-2026-01-01.json"
    started = time.monotonic()
    sidecar = start(sidecars, tmp_path, root, s3, "--role", "head", "--sync-period", str(period))
    stop = threading.Event()

    def trainer() -> None:  # the driver rewrites its state far more often than the period
        n = 0
        while not stop.is_set():
            n += 1
            state.write_text(json.dumps({"step": n}))
            time.sleep(0.02)

    writer = threading.Thread(target=trainer)
    writer.start()
    versions: set[bytes] = set()
    fs = s3.reader()
    path = f"{s3._root()}/exp/{state.name}"
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            versions.add(fs.cat_file(path))
            time.sleep(0.05)
        syncs = sidecar.metric('trialsync_syncs_total{outcome="success"}')
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert len(versions) >= 2, "the state was not synced again while the driver wrote it"
    # Never more often than the period (plus the start-up sync), however busy the machine.
    assert syncs <= elapsed / period + 2, f"{syncs} syncs in {elapsed:.1f}s"


def test_checkpoint_and_its_artifacts_upload_as_soon_as_it_is_complete(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1", "--sync-period", "3600")
    trial = trials.trial(trials.experiment(root))
    time.sleep(1.5)
    # A worker has no timer (scenario 2 and 4 ride on checkpoints): artifacts wait.
    assert "exp/trial_00000/params.json" not in s3.listing()
    written = time.monotonic()
    trials.checkpoint(trial, 1, {"model.pt": 1_000_000})
    wait_for(lambda: MANIFEST in s3.listing(), 240, what="the checkpoint's manifest")
    # Within a minute on a busy machine (the wait allows four), so not the 3600 s period
    # (the settle window's exact timing is proven on a fake clock in
    # tests/unit/test_scheduler.py).
    assert time.monotonic() - written < 60
    remote = s3.listing()
    assert remote[f"{CKPT}/model.pt"] == 1_000_000
    # The artifacts went up with the checkpoint, before its manifest.
    assert {"exp/trial_00000/params.json", "exp/trial_00000/result.json"} <= remote.keys()
    assert "exp/experiment_state-2026-01-01.json" not in remote  # the head's job


def test_artifacts_stay_local_without_sync_artifacts(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    sidecar = start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1", "--no-sync-artifacts")
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 1000})
    wait_for(lambda: MANIFEST in s3.listing(), 10, what="the checkpoint's manifest")
    # Files this worker never syncs (artifacts here, the head's experiment state) are not
    # pending: the gauge would page someone for work that will never be done.
    time.sleep(1)  # the gauges are set as the round that wrote the manifest ends
    assert sidecar.metric("trialsync_pending_files") == 0
    assert sidecar.stop() == 0  # the final sync also leaves artifacts alone
    assert set(s3.listing()) == {f"{CKPT}/model.pt", MANIFEST}


def test_hung_upload_is_cancelled_at_sync_timeout_and_retried(
    s3: Backend,
    root: pathlib.Path,
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    seaweedfs: object,
    stall_proxy_factory: object,
) -> None:
    host, port = s3.env["AWS_ENDPOINT_URL"].rsplit("//", 1)[1].split(":")
    proxy = stall_proxy_factory(host, int(port))  # type: ignore[operator]
    sidecar = start(
        sidecars,
        tmp_path,
        root,
        s3,
        *("--sync-timeout", "2", "--checkpoint-settle", "1", "--max-backoff", "1"),
        env=endpoint(proxy.endpoint_url),
    )
    trial = trials.trial(trials.experiment(root))
    proxy.stall()
    written = time.monotonic()
    trials.checkpoint(trial, 1, {"model.pt": 3_000_000})
    wait_for(
        lambda: sidecar.metric('trialsync_sync_failures_total{reason="timeout"}') >= 1,
        15,
        what="a sync cancelled at sync_timeout",
    )
    took = time.monotonic() - written
    # Not before the timeout; the upper bound is loose for a busy machine (the exact
    # cancellation time is proven on a fake clock in tests/unit/test_scheduler.py).
    assert 2.0 <= took <= 30.0, f"cancelled after {took:.1f}s, sync_timeout is 2s"
    assert MANIFEST not in s3.listing()
    proxy.resume()
    wait_for(lambda: MANIFEST in s3.listing(), 15, what="the retried publish")
    assert s3.read(f"{CKPT}/model.pt") == (root / CKPT / "model.pt").read_bytes()


def test_sigterm_final_sync_publishes_a_checkpoint_once_it_settles(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    sidecar = start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "2")
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 200_000, "opt.pt": 1_000})
    assert sidecar.stop() == 0  # at once: the final sync waits for the checkpoint to settle
    local = trials.relative_files(root / "exp/trial_00000")
    remote = s3.listing()
    for rel, data in local.items():
        assert remote[f"exp/trial_00000/{rel}"] == len(data)
    assert MANIFEST in remote
    assert not any(rel.startswith("exp/experiment_state") for rel in remote)  # the head's job


def test_a_checkpoint_is_whole_when_its_manifest_appears(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1", "--files-in-flight", "1")
    trial = trials.trial(trials.experiment(root))
    files = {f"shard_{i:03d}.bin": 2_000 + i for i in range(200)} | {"model.pt": 4_000_000}
    trials.checkpoint(trial, 1, files)
    partial_views = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listing = s3.listing()
        in_checkpoint = {k: v for k, v in listing.items() if k.startswith(CKPT + "/")}
        if MANIFEST in listing:
            manifest = json.loads(s3.read(MANIFEST))
            for name, entry in manifest["files"].items():
                assert listing[f"{CKPT}/{name}"] == entry["size"]
            assert {name: e["size"] for name, e in manifest["files"].items()} == files
            break
        if in_checkpoint:
            partial_views += 1
    else:
        pytest.fail("the checkpoint was never published")
    # The reader did watch the upload in progress, so the check above was not vacuous.
    assert partial_views >= 1, "the reader never saw the upload in progress"


@pytest.mark.parametrize("trigger", ["http", "signal"])
def test_explicit_trigger_publishes_a_checkpoint_at_once(
    trigger: str, s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    sidecar = start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "600")
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 10_000})
    time.sleep(0.3)
    if trigger == "http":
        assert sidecar.post("/sync") == 202
    else:
        sidecar.proc.send_signal(10)  # SIGUSR1
    wait_for(lambda: MANIFEST in s3.listing(), 5, what="the triggered publish")


def test_once_with_an_empty_checkpoint_dir_publishes_the_rest_and_exits_zero(
    s3: Backend, root: pathlib.Path
) -> None:
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 5_000})
    (trial / "checkpoint_000002").mkdir()  # made by Ray, not written into yet
    started = time.monotonic()
    code, out = run_once(
        ["--root", str(root), "--upload-dir", s3.url, "--sync-timeout", "30"], s3.env
    )
    assert code == 0, out
    assert time.monotonic() - started < 25  # it did not wait for the empty dir to "settle"
    assert MANIFEST in s3.listing()


def test_an_empty_checkpoint_dir_does_not_hold_up_the_final_sync(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    sidecar = start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1")
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 5_000})
    wait_for(lambda: MANIFEST in s3.listing(), 30, what="the checkpoint")
    (trial / "checkpoint_000002").mkdir()  # the journal sees it; nothing is written into it
    time.sleep(1)
    started = time.monotonic()
    assert sidecar.stop() == 0  # all durable: an empty dir is nothing to publish
    assert time.monotonic() - started < 20  # not the whole 25 s budget


def test_once_exits_zero_only_when_everything_is_durable(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 5_000})
    code, out = run_once(["--root", str(root), "--upload-dir", s3.url], s3.env)
    assert code == 0, out
    assert MANIFEST in s3.listing()
    unreachable = {**s3.env, **endpoint("http://127.0.0.1:9")}
    started = time.monotonic()
    code, out = run_once(
        ["--root", str(root), "--upload-dir", s3.url, "--sync-timeout", "4"], unreachable
    )
    assert code == 1
    assert time.monotonic() - started < 30
    assert "sync failed" in out


def test_mirrored_checkpoint_deletion_removes_the_marker_and_files(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1", "--mirror-deletes")
    trial = trials.trial(trials.experiment(root))
    trials.checkpoint(trial, 1, {"model.pt": 1000})
    trials.checkpoint(trial, 2, {"model.pt": 1000})
    ckpt2 = "exp/trial_00000/checkpoint_000002"
    wait_for(lambda: f"{ckpt2}/{MANIFEST_NAME}" in s3.listing(), 10, what="checkpoint 2")
    wait_for(lambda: MANIFEST in s3.listing(), 10, what="checkpoint 1")
    shutil.rmtree(root / CKPT)  # Ray's num_to_keep removes old checkpoints
    wait_for(lambda: not any(k.startswith(CKPT) for k in s3.listing()), 10, what="deletion")
    assert f"{ckpt2}/model.pt" in s3.listing()


def test_without_mirroring_a_local_deletion_keeps_the_remote_copy(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    sidecar = start(sidecars, tmp_path, root, s3, "--checkpoint-settle", "1")
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 1000})
    wait_for(lambda: MANIFEST in s3.listing(), 10, what="the checkpoint")
    shutil.rmtree(root / CKPT)
    assert sidecar.stop() == 0
    assert {f"{CKPT}/model.pt", MANIFEST} <= s3.listing().keys()


def test_custom_syncer_publishes_through_the_syncer_interface(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    target = tmp_path / "copied"
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 2_000})
    repo = str(pathlib.Path(__file__).resolve().parents[2])
    code, out = run_once(
        [
            *("--root", str(root), "--upload-dir", f"file://{target}"),
            *("--syncer", "tests.support.copy_syncer:CopySyncer"),
        ],
        {"PYTHONPATH": repo},
    )
    assert code == 0, out
    assert (target / CKPT / "model.pt").read_bytes() == (root / CKPT / "model.pt").read_bytes()
    assert (target / MANIFEST).exists()
    assert (target / "exp/trial_00000/params.json").exists()


@pytest.mark.parametrize(
    "flags",
    [["--syncer", "none"], ["--role", "head"]],
    ids=["syncing-disabled", "head-without-upload-dir"],
)
def test_once_with_nothing_of_its_own_to_sync_exits_zero_at_once(
    root: pathlib.Path, flags: list[str]
) -> None:
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 1_000})
    code, out = run_once(
        [*("--root", str(root), "--http-addr", "127.0.0.1:0"), *flags],
        {"TRIALSYNC_HEAD_TOKEN": "s3cret"},
        timeout=20,
    )
    assert code == 0, out
    assert "nothing to sync without an upload dir" in out
