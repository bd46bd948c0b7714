"""``GET /status`` of a real sidecar process against SeaweedFS: synced once a checkpoint is
published, lagging while the store hangs, failing when a sync times out or the store
refuses the credentials, and synced again once the store answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from localcluster.object_stores import S3Bucket, S3Server
from tests.support.fault_proxy import FaultProxy
from tests.support.sidecar_process import Sidecar, wait_for

PERIOD = 5  # long enough that a busy machine does not skip the "pending" state
SETTLE = 1


def _status(sidecar: Sidecar) -> dict[str, Any]:
    code, body = sidecar.get("/status")
    assert code == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def _state_becomes(sidecar: Sidecar, state: str, timeout: float) -> dict[str, Any]:
    return wait_for(
        lambda: (s := _status(sidecar))["state"] == state and s, timeout, 0.2, what=state
    )


def _checkpoint(root: Path, n: int) -> str:
    rel = f"exp/trial_0/checkpoint_{n:06d}"
    (root / rel).mkdir(parents=True)
    (root / rel / "model.bin").write_bytes(b"x" * 1000)
    return rel


def _start(server: S3Server, endpoint: str, bucket: S3Bucket, root: Path, log: Path, **env: str):
    return Sidecar.start(
        [
            *("--root", str(root), "--upload-dir", f"{bucket.url}/exp-status"),
            *("--sync-period", str(PERIOD), "--checkpoint-settle", str(SETTLE)),
            *("--sync-timeout", "15", "--max-backoff", "1"),
        ],
        {
            **server.env(),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "TRIALSYNC_STORAGE_OPTIONS": json.dumps(
                {**server.sidecar_options(), "endpoint_url": endpoint}
            ),
            **env,
        },
        str(log),
    )


def test_status_follows_the_store_synced_lagging_failing_synced(
    seaweedfs: S3Server, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    with FaultProxy(upstream.hostname, upstream.port) as proxy:
        sidecar = _start(seaweedfs, proxy.endpoint_url, s3_bucket, root, tmp_path / "s.log")
        try:
            first = _state_becomes(sidecar, "synced", 30)
            assert first["duty"] == "upload"
            assert first["sync_period"] == PERIOD
            assert first["newest_checkpoint"] is None
            assert first["oldest_unsynced"] is None
            assert first["last_success"] is not None

            written = time.time()
            one = _checkpoint(root, 1)
            synced = wait_for(
                lambda: (s := _status(sidecar))["newest_checkpoint"] and s, 30, 0.2, what="one"
            )
            assert synced["state"] == "synced"
            assert synced["newest_checkpoint"]["path"] == one
            assert synced["newest_checkpoint"]["published_at"] >= written
            assert synced["oldest_unsynced"] is None

            # The store hangs: the next checkpoint settles and cannot be published.
            proxy.stall()
            stalled = time.time()
            two = _checkpoint(root, 2)
            pending = wait_for(
                lambda: (s := _status(sidecar))["oldest_unsynced"] and s, 10, 0.1, what="pending"
            )
            assert pending["state"] == "synced"  # pending, not yet for a whole period
            assert pending["oldest_unsynced"]["path"] == two
            lagging = _state_becomes(sidecar, "lagging", 15)
            # Due once settled; lagging one period after that.
            assert time.time() - stalled >= SETTLE + PERIOD
            assert lagging["oldest_unsynced"]["path"] == two
            assert lagging["newest_checkpoint"]["path"] == one
            assert lagging["pending_checkpoints"] == 1
            # The hung sync is cancelled at sync_timeout: failing, and why.
            failing = _state_becomes(sidecar, "failing", 30)
            assert failing["failure_reason"] == "timeout"
            assert failing["failing_since"] >= stalled
            assert failing["oldest_unsynced"]["path"] == two

            proxy.resume()
            again = wait_for(
                lambda: (
                    (s := _status(sidecar))["state"] == "synced"
                    and s["newest_checkpoint"]["path"] == two
                    and s
                ),
                60,
                0.2,
                what="synced again",
            )
            assert again["oldest_unsynced"] is None
            assert again["failing_since"] is None
            assert again["last_success"] >= failing["failing_since"]
        finally:
            proxy.resume()
            sidecar.stop()


def test_a_store_that_refuses_the_credentials_is_failing_from_the_start(
    seaweedfs: S3Server, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _checkpoint(root, 1)
    sidecar = _start(
        seaweedfs,
        seaweedfs.endpoint_url,
        s3_bucket,
        root,
        tmp_path / "s.log",
        AWS_SECRET_ACCESS_KEY="not-the-secret",
    )
    try:
        failing = _state_becomes(sidecar, "failing", 30)
        assert failing["failure_reason"] == "credentials"
        assert failing["last_success"] is None
        assert failing["newest_checkpoint"] is None
        assert sidecar.get("/readyz")[0] == 503
    finally:
        sidecar.stop()


def test_a_sidecar_that_has_not_synced_yet_is_starting(seaweedfs: S3Server, tmp_path: Path) -> None:
    """The store answers slowly to the first sync (the bucket's listing hangs): starting,
    neither synced nor failing, until the sync times out."""
    root = tmp_path / "root"
    root.mkdir()
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    bucket = S3Bucket(seaweedfs, seaweedfs.make_bucket())
    with FaultProxy(upstream.hostname, upstream.port) as proxy:
        proxy.stall()
        sidecar = _start(seaweedfs, proxy.endpoint_url, bucket, root, tmp_path / "s.log")
        try:
            assert _status(sidecar)["state"] == "starting"
            proxy.resume()
            _state_becomes(sidecar, "synced", 30)
        finally:
            proxy.resume()
            sidecar.stop()
