"""A simulated Ray trial, run in pods as ``python3 -c <this file> ARGS``.

It writes checkpoints the way Ray Tune lays them out, ``<root>/<experiment>/<trial>/
checkpoint_00000N/`` (a model file and a metadata file), plus an artifact beside them
(``progress.csv``), and prints one JSON line per event so the test can read what it did
through ``kubectl logs``:

    {"event": "start", "readyz": 200, ...}      the sidecar's /readyz when the trainer started
    {"event": "checkpoint", "name": ..., "files": {relative path: sha256}}
    {"event": "deleted", "name": ...}            with --keep, an older checkpoint removed
    {"event": "done"}

``--trigger`` POSTs the sidecar's /sync after each checkpoint (the exact-publishing path);
without it the sidecar's settle window decides. ``--then sleep`` keeps running afterwards
(until SIGTERM) instead of exiting 0. ``--keep N`` deletes all but the newest N checkpoints
after each one, as Ray's ``num_to_keep`` does. Standard library only: it runs in the sidecar image.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request

SIDECAR = "http://127.0.0.1:9746"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


def sidecar_status(path: str, method: str = "GET") -> int:
    request = urllib.request.Request(SIDECAR + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # nothing listening: the sidecar is not running


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainer")
    parser.add_argument("--root", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--trial", required=True)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--size", type=int, default=256 * 1024, help="model file bytes")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between checkpoints")
    parser.add_argument("--trigger", action="store_true", help="POST /sync after each checkpoint")
    parser.add_argument("--then", choices=("exit", "sleep"), default="exit")
    parser.add_argument("--keep", type=int, default=0, help="newest checkpoints kept (0: all)")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        emit("sigterm")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    emit("start", readyz=sidecar_status("/readyz"), uid=os.getuid(), gid=os.getgid())
    trial_dir = os.path.join(args.root, args.experiment, args.trial)
    os.makedirs(trial_dir, exist_ok=True)
    rng = random.Random(f"{args.experiment}/{args.trial}")
    for i in range(1, args.checkpoints + 1):
        name = f"checkpoint_{i:06d}"
        directory = os.path.join(trial_dir, name)
        os.makedirs(directory)
        files = {
            f"{name}/model.bin": write(
                os.path.join(directory, "model.bin"), rng.randbytes(args.size)
            ),
            f"{name}/meta.json": write(
                os.path.join(directory, "meta.json"), json.dumps({"iteration": i}).encode()
            ),
        }
        with open(os.path.join(trial_dir, "progress.csv"), "a") as progress:
            progress.write(f"{i},{rng.random()}\n")
        trigger = sidecar_status("/sync", "POST") if args.trigger else None
        emit("checkpoint", name=name, files=files, trigger=trigger)
        time.sleep(args.interval)
        if args.keep and i > args.keep:
            old = f"checkpoint_{i - args.keep:06d}"
            shutil.rmtree(os.path.join(trial_dir, old))
            emit("deleted", name=old)
    emit("done")
    while args.then == "sleep":
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    # `python3 -c SOURCE ARGS...` puts "-c" in argv[0].
    sys.exit(main(sys.argv[1:]))
