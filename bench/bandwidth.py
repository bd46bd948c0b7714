"""bandwidth_limit: the upload rate a sidecar holds under ``--bandwidth-limit``, on each of
``--bandwidth-stores``: ``s3`` (SeaweedFS on loopback, through the lean S3 client, which
takes each slice of a body as it sends it) and ``file`` (a directory on tmpfs, through
fsspec's local filesystem, which takes a whole file before it copies it). SeaweedFS here
takes uploads at about 130 MiB/s at most; the file store, many times that, so a limit of
200 MiB/s can be shown on it.

For each store and limit, a trial with a few checkpoints (several files each; on S3 one of
them multipart) is uploaded by the sync engine, in process, through the same store,
transfer gates and token bucket as the sidecar; the rate is the bytes sent over the time
of the round (process start-up is left out: it is not upload time). The limit holds when
the rate is within ``--bandwidth-tolerance`` of it. An unlimited round first says what the
store can do at all: a limit above that cannot be shown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench import common

MiB = 2**20
#: The file store's checkpoints are in files of at most this size: it takes a whole file's
#: tokens at once, and the last file's debt is never waited out within the round.
FILE_PIECE = 16 * MiB
STORES = ("s3", "file")
#: Seconds between rounds, for the server to finish the previous one.
SETTLE_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bandwidth-limits",
        default="50Mi,200Mi",
        help="bandwidth: the limits measured, comma-separated quantities (50Mi,200Mi)",
    )
    parser.add_argument(
        "--bandwidth-seconds",
        type=float,
        default=6.0,
        help="bandwidth: seconds of upload each limit is measured over (6)",
    )
    parser.add_argument(
        "--bandwidth-tolerance", type=float, default=0.10, help="bandwidth: allowed error (0.10)"
    )
    parser.add_argument(
        "--bandwidth-stores",
        default=",".join(STORES),
        help="bandwidth: the stores measured, comma-separated: s3, file (s3,file)",
    )


def write_trial(root: Path, total: int, index: int, piece: int | None = None) -> str:
    """Checkpoints under ``root/exp/trial_<index>``: 4 per trial, each one large file
    (multipart on S3) and 8 small ones, ``total`` bytes in all. With ``piece``, the large
    file is written as files of at most that size."""
    trial = root / "exp" / f"trial_{index:05d}"
    per = total // 4
    for number in range(4):
        checkpoint = trial / f"checkpoint_{number:06d}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        small = per // 64
        for i in range(8):
            (checkpoint / f"shard_{i}.bin").write_bytes(os.urandom(small))
        large = per - 8 * small
        step = piece or large
        for i, offset in enumerate(range(0, large, step)):
            name = "model.pt" if piece is None else f"model_{i:03d}.pt"
            (checkpoint / name).write_bytes(os.urandom(min(step, large - offset)))
    return f"exp/trial_{index:05d}"


async def upload(url: str, options: dict[str, Any], root: Path, rate: int) -> tuple[int, float]:
    from trialsync._engine.engine import EngineOptions, Round, SyncEngine
    from trialsync._stores.fsspec_store import RemoteStore
    from trialsync._util import throttle
    from trialsync.metrics import Metrics

    store = RemoteStore(url, options, limiter=throttle.for_rate(rate))
    engine = SyncEngine(EngineOptions(root=str(root)), store, Metrics())
    try:
        await engine.recover(settle=0)
        started = time.perf_counter()
        await engine.run(Round(full=True), settle=0)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    sent = await asyncio.to_thread(_tree_bytes, root)
    return sent, elapsed


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trialsync import contract

    limits = [
        contract.BANDWIDTH_LIMIT.parse(text) or 0 for text in args.bandwidth_limits.split(",")
    ]
    stores = [name for name in args.bandwidth_stores.split(",") if name]
    unknown = set(stores) - set(STORES)
    if unknown:
        raise SystemExit(f"--bandwidth-stores: unknown {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {"tolerance": args.bandwidth_tolerance, "limits": []}
    with (
        common.scratch("bandwidth") as work,
        common.seaweedfs(work / "seaweedfs") as server,
        # The file store, and the trials uploaded, in memory: no disk's rate in the way.
        common.scratch("bandwidth", parent="/dev/shm") as memory,
    ):
        bucket = server.make_bucket()
        for store in stores:
            rows = _measure(args, limits, store, server, bucket, memory)
            results["limits"].extend(rows)
    return results


def _measure(
    args: argparse.Namespace,
    limits: list[int],
    store: str,
    server: Any,
    bucket: str,
    memory: Path,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, rate in [("unlimited", 0), *((f"{r / MiB:g} MiB/s", r) for r in limits)]:
        root = memory / f"root-{store}-{rate}"
        size = int((rate or max(limits)) * args.bandwidth_seconds)
        write_trial(root, size, 0, FILE_PIECE if store == "file" else None)
        # SeaweedFS goes on writing the previous round's data to its volumes for a while
        # after the last answer (it cost a limit of 50 MiB/s 12% of its rate here).
        time.sleep(SETTLE_S)
        if store == "s3":
            url, options = f"s3://{bucket}/r{rate}", server.storage_options()
        else:
            url, options = f"file://{memory}/store-{rate}", {}
        sent, seconds = asyncio.run(upload(url, options, root, rate))
        measured = sent / seconds
        row: dict[str, Any] = {
            "store": store,
            "limit": label,
            "limit_bytes_s": rate,
            "bytes": sent,
            "seconds": round(seconds, 3),
            "mib_s": round(measured / MiB, 1),
            "error": round(measured / rate - 1, 4) if rate else None,
        }
        row["holds"] = None if not rate else abs(row["error"]) <= args.bandwidth_tolerance
        if rate and not row["holds"] and rows:
            # Below the limit and at what the store does unlimited: not the limit.
            capacity = rows[0]["mib_s"] * MiB
            row["capacity_bound"] = measured < rate and capacity < rate * (
                1 + args.bandwidth_tolerance
            )
        rows.append(row)
        print(f"  {store} {label}: {row}", flush=True)
        shutil.rmtree(root)
        if store == "file":
            shutil.rmtree(f"{memory}/store-{rate}", ignore_errors=True)
    return rows


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            r["store"],
            r["limit"],
            f"{r['bytes'] / MiB:.0f}",
            r["seconds"],
            r["mib_s"],
            "" if r["error"] is None else f"{100 * r['error']:+.1f}%",
            ""
            if r["holds"] is None
            else "yes"
            if r["holds"]
            else "no: the store's own rate is lower"
            if r.get("capacity_bound")
            else "NO",
        ]
        for r in results["limits"]
    ]
    tolerance = 100 * results["tolerance"]
    return "\n".join(
        [
            "Upload rate under bandwidth_limit (s3: SeaweedFS, lean S3 client; file: tmpfs; "
            f"holds: within {tolerance:.0f}%)",
            common.table(["store", "limit", "MiB", "s", "MiB/s", "error", "holds"], rows),
        ]
    )


def main() -> None:
    common.run_alone("bandwidth", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
