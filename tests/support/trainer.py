"""A simulated Ray trainer as a process: writes checkpoints, triggers syncs, keeps a few.

``python -m tests.support.trainer --root R --log L --seed S ...`` writes
``<root>/exp/trial_N/checkpoint_NNNNNN/`` one after the other (round robin over the
trials), each file growing chunk by chunk, so a sidecar sees checkpoints being written.
Once a checkpoint is whole it appends its truth to the log (a JSON line: each file's size,
MD5 and the S3 ETag it gets with ``--part-size`` parts), then calls ``POST /sync`` on
``--trigger-port`` (errors ignored: the sidecar may be down), then deletes the trial's
oldest checkpoints beyond ``--num-to-keep`` (as Ray does), logging each deletion after
it. It stops between checkpoints once ``--stop-file`` exists, or after ``--checkpoints``.
Everything random comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import time
import urllib.request
from pathlib import Path

MiB = 2**20
CHUNK = 256 * 2**10


def s3_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives ``data`` uploaded as trialsync does (parts from two parts up)."""
    if len(data) < 2 * part_size:
        return hashlib.md5(data).hexdigest()
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    joined = b"".join(hashlib.md5(part).digest() for part in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


def file_sizes(rng: random.Random, part_size: int) -> dict[str, int]:
    sizes = {"model.pt": rng.choice([rng.randint(1, 300_000), rng.randint(MiB, 4 * MiB)])}
    if rng.random() < 0.3:  # a large file: a multipart upload
        sizes["model.pt"] = rng.randint(2 * part_size, 2 * part_size + 2 * MiB)
    if rng.random() < 0.7:
        sizes["optimizer.pt"] = rng.randint(1, 500_000)
    if rng.random() < 0.3:
        sizes["rng_state.pkl"] = rng.randint(0, 2_000)
    return sizes


def write_growing(path: Path, data: bytes, pause: float) -> None:
    """Write ``data`` to ``path`` a chunk at a time, as a trainer saving a tensor does."""
    with open(path, "wb") as handle:
        for start in range(0, len(data), CHUNK):
            handle.write(data[start : start + CHUNK])
            handle.flush()
            time.sleep(pause)


def trigger(port: int | None) -> None:
    if port is None:
        return
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sync", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()
    except OSError:
        pass  # the sidecar is down (being killed and restarted): the sync comes later


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=10**9)
    parser.add_argument("--num-to-keep", type=int, default=0)
    parser.add_argument("--part-size", type=int, default=5 * MiB)
    parser.add_argument("--trigger-port", type=int)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between checkpoints")
    parser.add_argument("--chunk-pause", type=float, default=0.004)
    parser.add_argument("--stop-file", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kept: dict[int, list[str]] = {t: [] for t in range(args.trials)}
    with open(args.log, "a", encoding="utf-8") as log:
        for number in range(args.checkpoints):
            if args.stop_file is not None and args.stop_file.exists():
                break
            trial = number % args.trials
            rel = f"exp/trial_{trial:05d}/checkpoint_{number // args.trials + 1:06d}"
            truth = {}
            for name, size in file_sizes(rng, args.part_size).items():
                data = rng.randbytes(size)
                (args.root / rel).mkdir(parents=True, exist_ok=True)
                write_growing(args.root / rel / name, data, args.chunk_pause)
                truth[name] = {
                    "size": size,
                    "md5": hashlib.md5(data).hexdigest(),
                    "etag": s3_etag(data, args.part_size),
                }
            log.write(json.dumps({"checkpoint": rel, "files": truth}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            trigger(args.trigger_port)
            kept[trial].append(rel)
            while args.num_to_keep and len(kept[trial]) > args.num_to_keep:
                oldest = kept[trial].pop(0)
                shutil.rmtree(args.root / oldest)
                log.write(json.dumps({"deleted": oldest}) + "\n")
                log.flush()
            time.sleep(args.pause)
    print("trainer done", flush=True)


if __name__ == "__main__":
    main()
