"""The sidecar alone beside a simulated Ray trial, syncing to a local S3 server.

``make demo`` runs this where the local cluster cannot run (not Linux, or not root).

Starts SeaweedFS on loopback, runs `trialsync sync` as a process (role head, so it also
syncs the experiment state), writes the experiment state and runs the simulated trainer
(``localcluster/trainer.py``, the one the pods run) for a trial: checkpoints and an artifact.
Prints where each checkpoint landed and how long after the trainer finished it its manifest
was published, then stops the sidecar with SIGTERM (its final sync) and lists what is in
the bucket.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.object_stores import S3Server, start_seaweedfs
from localcluster.processes import free_port
from tests.support.sidecar_process import wait_for

REPO = Path(__file__).resolve().parents[1]
MANIFEST = ".trialsync-manifest.json"
EXPERIMENT = "tune_demo"
TRIAL = "train_fn_00000"
CHECKPOINTS = 3
MODEL_BYTES = 24 * 2**20
SETTLE = 1  # --checkpoint-settle


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="trialsync-demo-") as tmp:
        print("starting a local S3 server (SeaweedFS) ...", flush=True)
        server = start_seaweedfs(Path(tmp) / "seaweedfs")
        try:
            return run(server, Path(tmp))
        finally:
            server.stop()


def run(server: S3Server, tmp: Path) -> int:
    bucket = server.make_bucket("trialsync-demo")
    # SeaweedFS allocates a new bucket's volumes on its first write (about a second on two
    # cores): do that now, so the times below are the sidecar's.
    server.client().put_object(Bucket=bucket, Key="warm-up", Body=b"x" * 4096)
    server.client().delete_object(Bucket=bucket, Key="warm-up")
    upload_dir = f"s3://{bucket}/experiments"
    root = tmp / "ray_results"
    root.mkdir()
    port = free_port()
    log_path = tmp / "sidecar.log"
    env = {**os.environ, **server.env()}
    argv = [
        *(sys.executable, "-m", "trialsync.cli", "sync"),
        *("--root", str(root), "--upload-dir", upload_dir, "--role", "head"),
        *("--sync-period", "2", "--checkpoint-settle", str(SETTLE)),
        *("--http-addr", f"127.0.0.1:{port}"),
    ]
    print(f"S3 endpoint   {server.endpoint_url}\nupload dir    {upload_dir}\nlocal root    {root}")
    print(f"sidecar       {' '.join(argv[1:])}\n", flush=True)
    with open(log_path, "wb") as log:
        sidecar = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _get(port, "/readyz") == 200, 30, what="the sidecar")
            train(root, server, bucket)
            print("\ntraining done; SIGTERM to the sidecar (final sync) ...", flush=True)
            started = time.monotonic()
            sidecar.send_signal(signal.SIGTERM)
            code = sidecar.wait(60)
            print(f"sidecar exited {code} after {time.monotonic() - started:.2f} s\n")
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
    show_bucket(server, bucket)
    print(f"\nsidecar log (JSON lines): {log_path.name}; the server and files are removed now.")
    return 0 if code == 0 else 1


def train(root: Path, server: S3Server, bucket: str) -> None:
    """Play a Ray experiment: the driver's state, then one trial written by the trainer
    (``localcluster.trainer``) as a process, and each checkpoint as it is published."""
    trial = root / EXPERIMENT / TRIAL
    trial.mkdir(parents=True)
    (root / EXPERIMENT / "experiment_state-demo.json").write_text(json.dumps({"trials": [TRIAL]}))
    (trial / "params.json").write_text(json.dumps({"lr": 0.01, "batch_size": 64}))
    argv = [
        *(sys.executable, "-m", "localcluster.trainer", "--root", str(root)),
        *("--experiment", EXPERIMENT, "--trial", TRIAL, "--checkpoints", str(CHECKPOINTS)),
        *("--size", str(MODEL_BYTES), "--interval", "2"),
    ]
    client = server.client()
    trainer = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout is not None
        for line in trainer.stdout:
            event = json.loads(line)
            if event["event"] != "checkpoint":
                continue
            rel = f"{EXPERIMENT}/{TRIAL}/{event['name']}"
            key = f"experiments/{rel}/{MANIFEST}"
            manifest = wait_for(functools.partial(_manifest, client, bucket, key), 60, what=rel)
            took = manifest["published_at"] - event["time"]
            size = manifest["total_bytes"] / 2**20
            print(
                f"{event['name']}: {size:5.1f} MiB -> s3://{bucket}/experiments/{rel}/"
                f"  published {took:4.2f} s after the trainer wrote it ({SETTLE} s of that is"
                " the settle window)",
                flush=True,
            )
        if trainer.wait(60) != 0:
            raise RuntimeError(f"the trainer exited {trainer.returncode}")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        client.close()


def show_bucket(server: S3Server, bucket: str) -> None:
    fs = server.filesystem()
    found = fs.find(f"{bucket}/experiments", detail=True)
    print(f"what landed in s3://{bucket}/experiments:")
    for name, info in sorted(found.items()):
        rel = name.split("/experiments/", 1)[1]
        print(f"  {info['size']:>10,d}  {rel}")


def _manifest(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """The manifest at ``key``; empty while there is none."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return {}
    manifest: dict[str, Any] = json.loads(body)
    return manifest


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
