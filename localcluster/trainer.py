"""A simulated Ray trainer: writes checkpoints as Ray Tune lays them out, tells the sidecar
of each, and keeps only the newest few. The one trainer of the tests and demos:

* in pods (``tests/pods/trial_pods.py``, ``demo/demo.py``): ``python3 -c <this file> ARGS``,
  in the sidecar image, hence the standard library only;
* on the host (the fault suite, ``demo/sidecar_demo.py``): ``python -m localcluster.trainer
  ARGS``.

What it writes, under ``--root``: ``<experiment>/<trial>/checkpoint_00000N/`` for each of
its trials in turn (``--trial NAME``, or ``--trials N``: ``trial_00000`` ...), each file
growing 256 KiB at a time (``--chunk-pause`` seconds apart) as a trainer saving a tensor
does, and a line of ``progress.csv`` (an artifact) beside them. A checkpoint holds

* ``model.bin`` of ``--size`` bytes and ``meta.json``; or, with ``--seed``,
* files whose names and sizes are drawn from the seed: ``model.pt`` (small, a few MiB, or
  more than two ``--part-size`` parts: a multipart upload), often ``optimizer.pt``,
  sometimes ``rng_state.pkl``.

Everything random comes from ``--seed`` (or from the experiment and trial names). After
each checkpoint, in this order: its truth goes to ``--log`` (one JSON line, fsynced:
``{"checkpoint": "<experiment>/<trial>/<name>", "files": {name: {"size", "md5", "etag"}}}``,
the ETag S3 gives the file uploaded in ``--part-size`` parts); with ``--trigger`` (or
``--trigger-port``) it POSTs the sidecar's ``/sync`` (a sidecar that is down is no error);
it waits ``--interval`` seconds; then, with ``--keep N``, it deletes the trial's checkpoints
older than its newest N, as Ray's ``num_to_keep`` does (``{"deleted": ...}`` in the log).
It stops after ``--checkpoints`` (0: no limit) or, between two checkpoints, once
``--stop-file`` exists; ``--then sleep`` keeps it running afterwards, until SIGTERM, and
``--hold-after N`` holds a run that resumed nothing after checkpoint N (SIGTERM then
fails it, exit 143). With
``--resume`` it goes on after the newest checkpoint it finds (a restored one), as a Ray
trainer resuming does.

It prints one JSON line per event on stdout (``kubectl logs`` in a pod), each with its
``time`` (``time.time()``):

    {"event": "start", "started": ..., "readyz": 200,          its first instruction's time,
     "uid": ..., "gid": ...,                                    the sidecar's /readyz then,
     "found": {trial: {checkpoint: {path: sha256}}}}           and what the volume holds
    {"event": "checkpoint", "trial": ..., "name": ..., "files": {relative path: sha256},
     "trigger": 202}                                            (the answer to POST /sync)
    {"event": "deleted", "trial": ..., "name": ...}
    {"event": "done"}
    {"event": "sigterm"}
"""

from __future__ import annotations

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
from typing import IO

MiB = 2**20
CHUNK = 256 * 2**10
SIDECAR_PORT = 9746  # the sidecar's status server (trialsync.contract.HTTP_PORT)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


def sidecar_status(port: int, path: str, method: str = "GET") -> int:
    """The sidecar's answer to ``method path``; 0 if nothing listens (it is down)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def s3_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives ``data`` uploaded as trialsync does (parts from two parts up)."""
    if len(data) < 2 * part_size:
        return hashlib.md5(data).hexdigest()
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    joined = b"".join(hashlib.md5(part).digest() for part in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


def drawn_sizes(rng: random.Random, part_size: int) -> dict[str, int]:
    """The files of a checkpoint with ``--seed``: name -> size."""
    sizes = {"model.pt": rng.choice([rng.randint(1, 300_000), rng.randint(MiB, 4 * MiB)])}
    if rng.random() < 0.3:  # a large file: a multipart upload
        sizes["model.pt"] = rng.randint(2 * part_size, 2 * part_size + 2 * MiB)
    if rng.random() < 0.7:
        sizes["optimizer.pt"] = rng.randint(1, 500_000)
    if rng.random() < 0.3:
        sizes["rng_state.pkl"] = rng.randint(0, 2_000)
    return sizes


def contents(rng: random.Random, args: argparse.Namespace, iteration: int) -> dict[str, bytes]:
    """The files of the next checkpoint: name -> bytes."""
    if args.seed is None:
        return {
            "model.bin": rng.randbytes(args.size),
            "meta.json": json.dumps({"iteration": iteration}).encode(),
        }
    return {name: rng.randbytes(size) for name, size in drawn_sizes(rng, args.part_size).items()}


def write_growing(path: str, data: bytes, pause: float) -> None:
    """Write ``data`` to ``path`` a chunk at a time, as a trainer saving a tensor does."""
    with open(path, "wb") as handle:
        for start in range(0, len(data), CHUNK):
            handle.write(data[start : start + CHUNK])
            handle.flush()
            if pause:
                time.sleep(pause)


def record(log: IO[str] | None, entry: dict[str, object], sync: bool = False) -> None:
    if log is None:
        return
    log.write(json.dumps(entry) + "\n")
    log.flush()
    if sync:
        os.fsync(log.fileno())


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainer", description="A simulated Ray trainer.")
    parser.add_argument("--root", required=True)
    parser.add_argument("--experiment", default="exp")
    trials = parser.add_mutually_exclusive_group()
    trials.add_argument("--trial", help="the one trial's name")
    trials.add_argument("--trials", type=int, default=1, help="trial_00000 ... round robin")
    parser.add_argument("--checkpoints", type=int, default=3, help="in all (0: no limit)")
    parser.add_argument("--size", type=int, default=256 * 1024, help="model.bin bytes")
    parser.add_argument("--seed", type=int, help="draw the files and their sizes from it")
    parser.add_argument("--part-size", type=int, default=5 * MiB, help="for the ETags")
    parser.add_argument(
        "--interval", "--pause", type=float, default=0.5, help="seconds after a checkpoint"
    )
    parser.add_argument("--chunk-pause", type=float, default=0.0, help="seconds per 256 KiB")
    parser.add_argument("--trigger", action="store_true", help="POST /sync after each one")
    parser.add_argument("--trigger-port", type=int, help=f"the sidecar's (default {SIDECAR_PORT})")
    parser.add_argument("--then", choices=("exit", "sleep"), default="exit")
    parser.add_argument(
        "--keep", "--num-to-keep", type=int, default=0, help="newest checkpoints kept (0: all)"
    )
    parser.add_argument("--log", help="the truth log (JSON lines)")
    parser.add_argument("--stop-file", help="stop before the next checkpoint once it exists")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on after the newest checkpoint found in the trial dirs (then --checkpoints "
        "counts from the first one ever)",
    )
    parser.add_argument(
        "--hold-after",
        type=int,
        default=0,
        help="after checkpoint N of a run that resumed nothing, wait for SIGTERM",
    )
    return parser.parse_args(argv)


def found_checkpoints(trial_dir: str) -> dict[str, dict[str, str]]:
    """The checkpoints in ``trial_dir``: name -> {relative path: sha256} of their files."""
    found: dict[str, dict[str, str]] = {}
    if not os.path.isdir(trial_dir):
        return found
    for name in sorted(os.listdir(trial_dir)):
        path = os.path.join(trial_dir, name)
        if not name.startswith("checkpoint_") or not os.path.isdir(path):
            continue
        files: dict[str, str] = {}
        for parent, _, names in os.walk(path):
            for file in names:
                full = os.path.join(parent, file)
                with open(full, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                files[os.path.relpath(full, trial_dir)] = digest
        found[name] = files
    return found


def main(argv: list[str]) -> int:
    started = time.time()  # the first instruction
    args = parse(argv)
    port = SIDECAR_PORT if args.trigger_port is None else args.trigger_port
    trigger = args.trigger or args.trigger_port is not None

    def on_sigterm(signum: int, frame: object) -> None:
        emit("sigterm")
        sys.exit(0)

    def on_sigterm_while_holding(signum: int, frame: object) -> None:
        emit("sigterm")
        sys.exit(143)  # killed mid-training: the pod fails, and its Job retries it

    signal.signal(signal.SIGTERM, on_sigterm)
    readyz = sidecar_status(port, "/readyz")
    names = [args.trial] if args.trial else [f"trial_{t:05d}" for t in range(args.trials)]
    # What the volume holds at the first instruction: a restored trial's checkpoints.
    found = {t: found_checkpoints(os.path.join(args.root, args.experiment, t)) for t in names}
    emit("start", started=started, readyz=readyz, uid=os.getuid(), gid=os.getgid(), found=found)
    resumed = min((len(found[t]) and int(max(found[t])[11:])) for t in names) if args.resume else 0
    rng = random.Random(args.seed if args.seed is not None else "/".join([args.experiment, *names]))
    kept: dict[str, list[str]] = {trial: [] for trial in names}
    for trial in names:
        os.makedirs(os.path.join(args.root, args.experiment, trial), exist_ok=True)
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    try:
        number = resumed * len(names)  # every trial goes on after its newest checkpoint
        while not args.checkpoints or number < args.checkpoints:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            trial = names[number % len(names)]
            iteration = number // len(names) + 1
            number += 1
            trial_dir = os.path.join(args.root, args.experiment, trial)
            name = f"checkpoint_{iteration:06d}"
            os.makedirs(os.path.join(trial_dir, name), exist_ok=True)
            files: dict[str, str] = {}
            truth: dict[str, dict[str, object]] = {}
            for file, data in contents(rng, args, iteration).items():
                write_growing(os.path.join(trial_dir, name, file), data, args.chunk_pause)
                files[f"{name}/{file}"] = hashlib.sha256(data).hexdigest()
                if log is not None:
                    truth[file] = {
                        "size": len(data),
                        "md5": hashlib.md5(data).hexdigest(),
                        "etag": s3_etag(data, args.part_size),
                    }
            with open(os.path.join(trial_dir, "progress.csv"), "a") as progress:
                progress.write(f"{iteration},{rng.random()}\n")
            record(log, {"checkpoint": f"{args.experiment}/{trial}/{name}", "files": truth}, True)
            answer = sidecar_status(port, "/sync", "POST") if trigger else None
            emit("checkpoint", trial=trial, name=name, files=files, trigger=answer)
            time.sleep(args.interval)
            kept[trial].append(name)
            while args.keep and len(kept[trial]) > args.keep:
                old = kept[trial].pop(0)
                shutil.rmtree(os.path.join(trial_dir, old))
                record(log, {"deleted": f"{args.experiment}/{trial}/{old}"})
                emit("deleted", trial=trial, name=old)
            if args.hold_after and iteration == args.hold_after and not resumed:
                emit("holding", name=name)
                signal.signal(signal.SIGTERM, on_sigterm_while_holding)
                while True:
                    time.sleep(3600)
    finally:
        if log is not None:
            log.close()
    emit("done")
    while args.then == "sleep":
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    # `python3 -c SOURCE ARGS...` puts "-c" in argv[0].
    sys.exit(main(sys.argv[1:]))
