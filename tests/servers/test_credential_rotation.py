"""A credentials Secret rotated mid-run, with the old keys revoked on the S3 server.

The sidecar reads its keys from a directory laid out as the kubelet lays out a Secret
volume (``tests/support/secret_volume.py``); SeaweedFS revokes a key live (its
``-s3.config`` reloaded on SIGHUP, ``S3Server.rotate_keys``). Uploads stop while the old
keys are refused, and go on within ``credential_watch.POLL_INTERVAL`` plus one sync of
the new version reaching the volume, not when the backoff would retry; every checkpoint
written before, during and after is published whole.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.object_stores import S3Server, start_seaweedfs
from tests.support import checkpoint_audit, secret_volume, trials
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._process import credential_watch

#: Failed syncs to wait for before the new keys arrive: the next retry is then
#: 2 ** (FAILURES - 1) = 8 s away, longer than the bound, so only the sidecar's
#: detection of the new version can meet it.
FAILURES = 4
#: The sidecar's own share of the rotation bound: one look at the mount, one sync round
#: (a few small files here) and slack for a loaded 2-core machine.
BOUND = credential_watch.POLL_INTERVAL + 4.0


@pytest.fixture
def private_seaweedfs() -> Iterator[S3Server]:
    """A server of this test alone: rotating the session server's key would lock out the
    other tests."""
    server = start_seaweedfs()
    try:
        yield server
    finally:
        server.stop()


def _keys(server: S3Server) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}


class Published:
    """Whether a checkpoint's manifest is in the bucket, asked with the server's current
    keys through one client per keys (a new client per poll costs the machine a lot of the
    time the sidecar is being timed in)."""

    def __init__(self, server: S3Server, bucket: str, prefix: str) -> None:
        self.server, self.bucket, self.prefix = server, bucket, prefix
        self._clients: dict[str, Any] = {}

    def __call__(self, checkpoint: Path) -> bool:
        rel = checkpoint.relative_to(checkpoint.parents[2]).as_posix()
        if self.server.access_key not in self._clients:
            self._clients[self.server.access_key] = self.server.client()
        client = self._clients[self.server.access_key]
        key = f"{self.prefix}/{rel}/{MANIFEST_NAME}"
        return checkpoint_audit.read_manifest(client, self.bucket, key) is not None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _credential_failures(sidecar: Sidecar) -> float:
    _, text = sidecar.get("/metrics")
    for line in text.splitlines():
        if line.startswith('trialsync_sync_failures_total{reason="credentials"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_uploads_go_on_after_a_rotation_that_revoked_the_old_keys_and_nothing_is_lost(
    private_seaweedfs: S3Server, tmp_path: Path
) -> None:
    server = private_seaweedfs
    bucket = server.make_bucket()
    mount = tmp_path / "credentials"
    secret_volume.publish(mount, _keys(server))
    env = {k: v for k, v in server.env().items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    env.pop("AWS_SECRET_ACCESS_KEY")
    env["TRIALSYNC_STORAGE_OPTIONS"] = json.dumps(server.sidecar_options())
    env["TRIALSYNC_CREDENTIALS_DIR"] = str(mount)
    root = tmp_path / "root"
    trial = trials.trial(trials.experiment(root))
    args = [
        "--root",
        str(root),
        "--upload-dir",
        f"s3://{bucket}/runs",
        "--checkpoint-settle",
        "1",
    ]
    sidecar = Sidecar.start(args, env, str(tmp_path / "sidecar.log"))
    checkpoints: list[Path] = []

    def save(index: int) -> Path:
        checkpoints.append(trials.checkpoint(trial, index, {"model.pt": 300_000, "meta": 100}))
        return checkpoints[-1]

    published = Published(server, bucket, "runs")

    try:
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="ready with the old keys")
        for index in (1, 2):
            wait_for(functools.partial(published, save(index)), 30, what=f"checkpoint {index}")

        server.rotate_keys()  # the old keys are refused from here on
        during = save(3)
        wait_for(
            lambda: _credential_failures(sidecar) >= FAILURES,
            60,
            interval=0.1,
            what=f"{FAILURES} syncs refused for credentials",
        )
        assert not published(during)
        assert sidecar.get("/readyz")[0] == 200  # ready still means recovered; the log says
        assert "InvalidAccessKeyId" in sidecar.log()

        secret_volume.publish(mount, _keys(server))  # the kubelet delivers the new keys
        arrived = time.monotonic()
        wait_for(lambda: published(during), BOUND, interval=0.1, what="the checkpoint after")
        resumed = time.monotonic() - arrived
        assert resumed <= BOUND
        assert "new credentials" in sidecar.log()

        after = save(4)
        wait_for(functools.partial(published, after), 30, what="checkpoint 4, new keys")
    finally:
        code = sidecar.stop()
        published.close()
    assert code == 0, sidecar.log()

    client = server.client()
    try:
        listing = checkpoint_audit.list_bucket(client, bucket, "runs")
        for checkpoint in checkpoints:
            rel = checkpoint.relative_to(root).as_posix()
            local = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
            manifest = checkpoint_audit.read_manifest(client, bucket, f"runs/{rel}/{MANIFEST_NAME}")
            assert manifest == {name: len(data) for name, data in local.items()}, rel
            assert set(checkpoint_audit.checkpoint_files(listing, rel)) == set(local), rel
            for name, data in local.items():
                body = client.get_object(Bucket=bucket, Key=f"runs/{rel}/{name}")["Body"].read()
                assert body == data, f"{rel}/{name}"
    finally:
        client.close()
