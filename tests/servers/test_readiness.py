"""Readiness means the store answers with the given credentials, even with nothing to sync:
the startup probe holds the trainer until its checkpoints can be saved."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from localcluster.object_stores import S3Bucket, S3Server
from tests.support.sidecar_process import Sidecar, wait_for


def _start(server: S3Server, upload_dir: str, root: Path, log: Path, **env: str) -> Sidecar:
    return Sidecar.start(
        ["--root", str(root), "--upload-dir", upload_dir, "--max-backoff", "1"],
        {**server.env(), "TRIALSYNC_STORAGE_OPTIONS": json.dumps(server.sidecar_options()), **env},
        str(log),
    )


def test_an_empty_root_is_not_ready_until_the_bucket_exists(
    seaweedfs: S3Server, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    sidecar = _start(seaweedfs, f"s3://{bucket}/exp", root, tmp_path / "s.log")
    try:
        wait_for(
            lambda: sidecar.log().count("the bucket does not exist") >= 2,
            30,
            what="attempts refused for the missing bucket",
        )
        assert sidecar.get("/readyz")[0] == 503
        seaweedfs.make_bucket(bucket)
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="ready once the bucket exists")
    finally:
        sidecar.stop()


def test_wrong_credentials_keep_it_unready_and_say_so(
    seaweedfs: S3Server, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sidecar = Sidecar.start(
        ["--root", str(root), "--upload-dir", f"{s3_bucket.url}/exp", "--max-backoff", "1"],
        {
            **seaweedfs.env(),
            "AWS_SECRET_ACCESS_KEY": "not-the-secret",
            "TRIALSYNC_STORAGE_OPTIONS": json.dumps(seaweedfs.sidecar_options()),
        },
        str(tmp_path / "s.log"),
    )
    try:
        wait_for(
            lambda: "PermissionError" in sidecar.log() or "SignatureDoesNotMatch" in sidecar.log(),
            30,
            what="the wrong credentials refused",
        )
        assert sidecar.get("/readyz")[0] == 503
    finally:
        sidecar.stop()


def test_a_file_upload_dir_must_be_a_writable_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    sidecar = Sidecar.start(
        ["--root", str(root), "--upload-dir", f"file://{blocked}/exp", "--max-backoff", "1"],
        {},
        str(tmp_path / "s.log"),
    )
    try:
        wait_for(lambda: "is not a directory" in sidecar.log(), 30, what="the file refused")
        assert sidecar.get("/readyz")[0] == 503
    finally:
        sidecar.stop()
