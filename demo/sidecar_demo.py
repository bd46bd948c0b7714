"""The sidecar alone beside a simulated Ray trial, syncing to a local S3 server.

``make demo`` runs this where the local cluster cannot run (not Linux, or not root).

Starts SeaweedFS on loopback, runs `trialsync sync` as a process (role head, so it also
syncs the experiment state), and plays a trainer that writes artifacts and checkpoints.
Prints where each checkpoint landed and how long after completion it was published, then
stops the sidecar with SIGTERM (its final sync) and lists what is in the bucket.
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

MANIFEST = ".trialsync-manifest.json"
CHECKPOINTS = 3
MODEL_BYTES = 24 * 2**20


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
        *("--sync-period", "2", "--checkpoint-settle", "1"),
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
    """Play a Ray trial: experiment state, per-iteration results, and checkpoints."""
    fs = server.filesystem()
    _exists(fs, f"{bucket}/experiments")  # warm this watcher's client: time the sidecar only
    exp = root / "tune_demo"
    trial = exp / "train_fn_00000"
    trial.mkdir(parents=True)
    (exp / "experiment_state-demo.json").write_text(json.dumps({"trials": ["train_fn_00000"]}))
    (trial / "params.json").write_text(json.dumps({"lr": 0.01, "batch_size": 64}))
    for step in range(1, CHECKPOINTS + 1):
        with open(trial / "result.json", "a") as results:
            results.write(json.dumps({"training_iteration": step, "loss": 1.0 / step}) + "\n")
        checkpoint = trial / f"checkpoint_{step:06d}"
        checkpoint.mkdir()
        (checkpoint / "model.pt").write_bytes(os.urandom(MODEL_BYTES))
        (checkpoint / "optimizer.pt").write_bytes(os.urandom(MODEL_BYTES // 4))
        (checkpoint / ".tune_metadata").write_text(json.dumps({"iteration": step}))
        complete = time.monotonic()
        rel = checkpoint.relative_to(root).as_posix()
        marker = f"{bucket}/experiments/{rel}/{MANIFEST}"
        wait_for(functools.partial(_exists, fs, marker), 60, interval=0.02, what=rel)
        took = time.monotonic() - complete
        size = sum(p.stat().st_size for p in checkpoint.iterdir()) / 2**20
        print(
            f"checkpoint {step}: {size:5.1f} MiB -> s3://{bucket}/experiments/{rel}/  "
            f"published {took:4.2f} s after it was complete (0.5 s of that is the settle window)",
            flush=True,
        )
        time.sleep(1.0)


def show_bucket(server: S3Server, bucket: str) -> None:
    fs = server.filesystem()
    found = fs.find(f"{bucket}/experiments", detail=True)
    print(f"what landed in s3://{bucket}/experiments:")
    for name, info in sorted(found.items()):
        rel = name.split("/experiments/", 1)[1]
        print(f"  {info['size']:>10,d}  {rel}")


def _exists(fs: Any, path: str) -> bool:
    fs.invalidate_cache()
    return bool(fs.exists(path))


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
