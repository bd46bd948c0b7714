"""The fsspec store and the Ray-style FsspecSyncer against a real S3 server."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid
from typing import Any

import pytest

from tests.support import trials
from tests.support.sidecar_process import wait_for
from trialsync import FsspecSyncer, SyncError
from trialsync._stores.fsspec_store import CREDENTIAL_CHECK_INTERVAL, RemoteStore
from trialsync._stores.s3_client import S3Client


@pytest.fixture
def bucket_url(seaweedfs: Any) -> str:
    return f"s3://{seaweedfs.make_bucket()}/run-{uuid.uuid4().hex[:8]}"


def _credentials(path: pathlib.Path, key: str, secret: str) -> None:
    path.write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")


def _aws_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _path_style(seaweedfs: Any) -> dict[str, Any]:
    return {
        "client_kwargs": {"region_name": seaweedfs.region},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }


async def test_rotated_credentials_file_rebuilds_the_lean_client(
    seaweedfs: Any, bucket_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    _credentials(creds, seaweedfs.access_key, "not-the-secret")
    _aws_env(monkeypatch, AWS_SHARED_CREDENTIALS_FILE=str(creds))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    store = RemoteStore(
        bucket_url, {**_path_style(seaweedfs), "endpoint_url": seaweedfs.endpoint_url}
    )
    try:
        with pytest.raises(PermissionError):
            await store.put_file(str(model), "model.pt", 7)
        first = store._current
        assert first is not None
        assert isinstance(first.s3, S3Client)  # uploads go through the lean client
        # The Secret is rotated: the file now holds the right secret. Credentials are
        # checked at most once per CREDENTIAL_CHECK_INTERVAL.
        _credentials(creds, seaweedfs.access_key, seaweedfs.secret_key)
        await asyncio.sleep(CREDENTIAL_CHECK_INTERVAL)
        await store.put_file(str(model), "model.pt", 7)
        assert store._current is not first
        assert isinstance(store._current.s3, S3Client)
        assert (await store.list())["model.pt"].size == 7
    finally:
        await store.close()


async def test_a_client_retired_by_a_credential_change_is_closed_once_its_requests_end(
    seaweedfs: Any,
    bucket_url: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    stall_proxy_factory: Any,
) -> None:
    host, port = seaweedfs.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = stall_proxy_factory(host, int(port))
    _aws_env(
        monkeypatch,
        AWS_ACCESS_KEY_ID=seaweedfs.access_key,
        AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key,
        AWS_ENDPOINT_URL=proxy.endpoint_url,
        AWS_ENDPOINT_URL_S3=proxy.endpoint_url,
    )
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(2**20))
    store = RemoteStore(bucket_url, _path_style(seaweedfs))
    try:
        await store.connect()
        old = store._current
        assert old is not None
        assert isinstance(old.s3, S3Client)
        proxy.stall()
        upload = asyncio.create_task(store.put_file(str(model), "model.pt", 2**20))
        await asyncio.to_thread(
            wait_for, lambda: proxy.connections_accepted, 10, 0.01, "the upload in flight"
        )
        # The environment changes (its endpoint is part of the credentials' fingerprint):
        # the next operation builds a new client.
        monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweedfs.endpoint_url)
        await asyncio.sleep(CREDENTIAL_CHECK_INTERVAL)
        await store.put_bytes("probe", b"1")
        assert store._current is not old
        assert not old.s3._closed  # the upload on it still runs: not cut off
        proxy.resume()
        await upload
        for _ in range(200):  # closed once its last request ended, not at exit
            if old.s3._closed:
                break
            await asyncio.sleep(0.01)
        assert old.s3._closed
        assert {"model.pt", "probe"} <= (await store.list()).keys()
    finally:
        await store.close()


def test_fsspec_syncer_uploads_changes_downloads_and_deletes(
    seaweedfs: Any, bucket_url: str, tmp_path: pathlib.Path
) -> None:
    local = tmp_path / "exp"
    trials.trial(local)
    trials.checkpoint(local / "trial_00000", 1, {"model.pt": 100_000})
    syncer = FsspecSyncer(sync_timeout=30, storage_options=seaweedfs.storage_options())
    fs = seaweedfs.filesystem()
    remote = bucket_url.removeprefix("s3://")
    try:
        assert syncer.sync_up(str(local), bucket_url, exclude=["*.csv"])
        syncer.wait()
        landed = {p.removeprefix(remote + "/") for p in fs.find(remote)}
        assert landed == {
            "trial_00000/params.json",
            "trial_00000/result.json",
            "trial_00000/checkpoint_000001/model.pt",
        }
        before = fs.info(f"{remote}/trial_00000/params.json")["LastModified"]
        time.sleep(1.1)  # S3 timestamps have one-second resolution
        (local / "trial_00000/result.json").write_bytes(b'{"loss": 0.2}\n')
        assert syncer.sync_up(str(local), bucket_url, exclude=["*.csv"])
        syncer.wait()
        fs.invalidate_cache()
        assert fs.cat_file(f"{remote}/trial_00000/result.json") == b'{"loss": 0.2}\n'
        assert fs.info(f"{remote}/trial_00000/params.json")["LastModified"] == before

        restored = tmp_path / "restored"
        assert syncer.sync_down(bucket_url, str(restored))
        syncer.wait()
        assert trials.relative_files(restored) == {
            rel: data for rel, data in trials.relative_files(local).items() if rel in landed
        }

        assert syncer.delete(bucket_url)
        syncer.wait()
        fs.invalidate_cache()
        objects = [p for p, info in fs.find(remote, detail=True).items() if info["type"] == "file"]
        assert objects == []
    finally:
        syncer.close()


def test_fsspec_syncer_wait_cancels_a_hung_sync_and_retry_succeeds(
    seaweedfs: Any, bucket_url: str, tmp_path: pathlib.Path, stall_proxy_factory: Any
) -> None:
    host, port = seaweedfs.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = stall_proxy_factory(host, int(port))
    options = {**seaweedfs.storage_options(), "endpoint_url": proxy.endpoint_url}
    local = tmp_path / "exp"
    trials.trial(local)
    syncer = FsspecSyncer(sync_timeout=1.5, storage_options=options)
    try:
        proxy.stall()
        assert syncer.sync_up(str(local), bucket_url)
        assert not syncer.sync_up(str(local), bucket_url)  # one operation at a time
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"sync_timeout=1\.5s"):
            syncer.wait()
        assert 1.4 <= time.monotonic() - started < 20  # loose: a busy machine
        proxy.resume()
        syncer.retry()
        syncer.wait()
        assert len(seaweedfs.filesystem().find(bucket_url)) == 3
    finally:
        syncer.close()


def test_fsspec_syncer_reports_a_failing_store(tmp_path: pathlib.Path) -> None:
    local = tmp_path / "exp"
    trials.trial(local)
    options = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9"}
    syncer = FsspecSyncer(sync_timeout=20, storage_options=options)
    try:
        syncer.sync_up(str(local), "s3://nobucket/x")
        with pytest.raises(SyncError, match=r"PUT s3://nobucket/x/.*connecting to 127\.0\.0\.1:9"):
            syncer.wait()
    finally:
        syncer.close()


async def test_a_large_file_goes_up_in_parts(
    seaweedfs: Any, bucket_url: str, tmp_path: pathlib.Path
) -> None:
    big = tmp_path / "model.pt"
    big.write_bytes(os.urandom(12 * 2**20 + 123))
    store = RemoteStore(bucket_url, seaweedfs.storage_options(), part_size=5 * 2**20)
    try:
        await store.put_file(str(big), "exp/model.pt", big.stat().st_size)
        listed = (await store.list())["exp/model.pt"]
    finally:
        await store.close()
    assert listed.size == big.stat().st_size
    assert str(listed.checksum).endswith("-3")  # a multipart ETag: three parts
    fs = seaweedfs.filesystem()
    assert fs.cat_file(f"{bucket_url.removeprefix('s3://')}/exp/model.pt") == big.read_bytes()


async def test_a_cancelled_multipart_upload_is_aborted_before_the_store_closes(
    seaweedfs: Any, bucket_url: str, tmp_path: pathlib.Path
) -> None:
    big = tmp_path / "model.pt"
    big.write_bytes(os.urandom(40 * 2**20))
    store = RemoteStore(
        bucket_url, seaweedfs.storage_options(), part_size=5 * 2**20, part_concurrency=1
    )
    bucket, _, prefix = bucket_url.removeprefix("s3://").partition("/")
    client = seaweedfs.client()
    try:
        upload = asyncio.create_task(store.put_file(str(big), "exp/model.pt", big.stat().st_size))
        started = await asyncio.to_thread(
            wait_for,
            lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"),
            10,
            0.01,
            "the multipart upload to start",
        )
        assert started[0]["Key"] == f"{prefix}/exp/model.pt"
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
        await store.close()  # at once, as at the end of --once or a final sync
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    finally:
        client.close()
    assert "exp/model.pt" not in await RemoteStore(bucket_url, seaweedfs.storage_options()).list()
