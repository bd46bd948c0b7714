"""SIGTERM: the whole path fits in --final-sync-timeout, for the sidecar and for --once."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.fault_proxy import FaultProxy
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.layout import MANIFEST_NAME

MiB = 2**20
BUDGET = 4.0  # --final-sync-timeout
# Interpreter exit and the test's own polling, on a busy machine.
EXIT_MARGIN = 3.0
CKPT = "exp/trial_00000/checkpoint_000001"


def endpoint(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url}


def bucket_of(backend: Backend) -> str:
    return backend.url.removeprefix("s3://").split("/")[0]


def parts_uploaded(seaweedfs: Any, bucket: str) -> bool:
    """Whether some multipart upload in ``bucket`` has a part stored."""
    client = seaweedfs.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(
            client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]).get("Parts")
            for up in uploads
        )
    finally:
        client.close()


def multipart_started(seaweedfs: Any, bucket: str) -> bool:
    client = seaweedfs.client()
    try:
        return bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads"))
    finally:
        client.close()


def test_sigterm_with_a_hung_store_exits_within_the_final_sync_timeout(
    s3: Backend,
    root: pathlib.Path,
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    seaweedfs: Any,
) -> None:
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    args = [
        *("--root", str(root), "--upload-dir", s3.url, "--checkpoint-settle", "600"),
        *("--part-size", str(5 * MiB), "--final-sync-timeout", str(BUDGET)),
    ]
    # A slow link (2 MiB/s a connection): the upload is still under way when the store hangs.
    with FaultProxy(upstream.hostname, upstream.port, 0, bytes_per_second=2 * MiB) as proxy:
        sidecar = Sidecar.start(
            args, {**s3.env, **endpoint(proxy.endpoint_url)}, str(tmp_path / "s.log")
        )
        sidecars.append(sidecar)
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="the first sync")
        trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 40 * MiB})
        assert sidecar.post("/sync") == 202
        # A part in the store: the sidecar has the upload's id, so it has an abort to send.
        # (An upload merely created may not have its id back yet, and then nothing is
        # left to abort.)
        wait_for(lambda: parts_uploaded(seaweedfs, bucket_of(s3)), 30, what="a part stored")
        proxy.stall()  # the store hangs: the upload, and then its abort, never finish
        started = time.monotonic()
        code = sidecar.stop(timeout=60)
        took = time.monotonic() - started
    assert code == 1  # not durable
    # The final sync, the abort grace and closing all within the budget.
    assert took <= BUDGET + EXIT_MARGIN, f"exited {took:.1f}s after SIGTERM"
    assert "out of time closing the store" in sidecar.log()


def test_sigterm_during_once_aborts_its_uploads_and_exits_1(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, seaweedfs: Any
) -> None:
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 60 * MiB})
    # A slow link (4 parts in flight, 2 MiB/s each): the upload takes about 8 s, more than
    # the budget, and SIGTERM comes at its start.
    with FaultProxy(upstream.hostname, upstream.port, 0, bytes_per_second=2 * MiB) as proxy:
        args = [
            *("--root", str(root), "--upload-dir", s3.url, "--part-size", str(5 * MiB)),
            *("--final-sync-timeout", str(BUDGET)),
        ]
        with open(tmp_path / "once.log", "wb") as log:
            once = subprocess.Popen(
                [sys.executable, "-m", "trialsync.cli", "sync", "--once", *args],
                env={**os.environ, **s3.env, **endpoint(proxy.endpoint_url)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: multipart_started(seaweedfs, bucket_of(s3)), 30, what="parts")
                once.send_signal(signal.SIGUSR1)  # a trainer's trigger must not kill --once
                once.send_signal(signal.SIGTERM)
                started = time.monotonic()
                code = once.wait(60)
                took = time.monotonic() - started
            finally:
                if once.poll() is None:
                    once.kill()
    output = (tmp_path / "once.log").read_text()
    assert code == 1, output[-2000:]
    assert took <= BUDGET + EXIT_MARGIN, f"exited {took:.1f}s after SIGTERM"
    assert not multipart_started(seaweedfs, bucket_of(s3)), "parts left behind"
    assert f"{CKPT}/{MANIFEST_NAME}" not in s3.listing()


def test_a_checkpoint_growing_through_the_final_sync_is_uploaded_but_not_published(
    s3: Backend, root: pathlib.Path, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    args = [
        *("--root", str(root), "--upload-dir", s3.url),
        *("--checkpoint-settle", "1", "--final-sync-timeout", str(BUDGET)),
    ]
    sidecar = Sidecar.start(args, s3.env, str(tmp_path / "s.log"))
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="the first sync")
    model = root / CKPT / "model.pt"
    stop = threading.Event()

    def trainer() -> None:  # never pauses for the settle window, SIGTERM or not
        model.parent.mkdir(parents=True)
        with open(model, "wb") as handle:
            while not stop.is_set():
                handle.write(os.urandom(64 * 2**10))
                handle.flush()
                time.sleep(0.05)

    writer = threading.Thread(target=trainer)
    writer.start()
    try:
        time.sleep(1.5)
        size_at_sigterm = model.stat().st_size
        code = sidecar.stop(timeout=60)
        grew = model.stat().st_size - size_at_sigterm
    finally:
        stop.set()
        writer.join()
    assert grew > 0  # it did change during the final sync
    assert code == 1  # not everything is durable: the checkpoint is unpublished
    remote = s3.listing()
    assert f"{CKPT}/model.pt" in remote  # some of its bytes are safe
    assert f"{CKPT}/{MANIFEST_NAME}" not in remote  # but no reader takes it for complete
    assert "still changing at the final sync" in sidecar.log()
