"""bandwidth_limit: the upload rate a sidecar holds under ``--bandwidth-limit``, against
SeaweedFS on loopback.

For each limit, a trial with a few checkpoints (several files each, some multipart) is
uploaded by the sync engine, in process, through the same store, transfer gates and token
bucket as the sidecar; the rate is the bytes sent over the time of the round (process
start-up is left out: it is not upload time). The limit holds when the rate is within
``--bandwidth-tolerance`` of it. An unlimited round first says what the machine can do at
all: a limit above that cannot be shown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench import common

MiB = 2**20


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


def write_trial(root: Path, total: int, index: int) -> str:
    """Checkpoints under ``root/exp/trial_<index>``: 4 per trial, each one large file
    (multipart) and 8 small ones, ``total`` bytes in all."""
    trial = root / "exp" / f"trial_{index:05d}"
    per = total // 4
    for number in range(4):
        checkpoint = trial / f"checkpoint_{number:06d}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        small = per // 64
        for i in range(8):
            (checkpoint / f"shard_{i}.bin").write_bytes(os.urandom(small))
        (checkpoint / "model.pt").write_bytes(os.urandom(per - 8 * small))
    return f"exp/trial_{index:05d}"


async def upload(server: Any, root: Path, url: str, rate: int) -> tuple[int, float]:
    from trialsync._engine.engine import EngineOptions, Round, SyncEngine
    from trialsync._stores.fsspec_store import RemoteStore
    from trialsync._util import throttle
    from trialsync.metrics import Metrics

    store = RemoteStore(url, server.storage_options(), limiter=throttle.for_rate(rate))
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
    results: dict[str, Any] = {"tolerance": args.bandwidth_tolerance, "limits": []}
    with common.scratch("bandwidth") as work, common.seaweedfs(work / "seaweedfs") as server:
        bucket = server.make_bucket()
        for label, rate in [("unlimited", 0), *((f"{r / MiB:g} MiB/s", r) for r in limits)]:
            root = work / f"root-{rate}"
            size = int((rate or max(limits)) * args.bandwidth_seconds)
            write_trial(root, size, 0)
            common.warm(root)
            sent, seconds = asyncio.run(upload(server, root, f"s3://{bucket}/r{rate}", rate))
            measured = sent / seconds
            row = {
                "limit": label,
                "limit_bytes_s": rate,
                "bytes": sent,
                "seconds": round(seconds, 3),
                "mib_s": round(measured / MiB, 1),
                "error": round(measured / rate - 1, 4) if rate else None,
            }
            row["holds"] = None if not rate else abs(row["error"]) <= args.bandwidth_tolerance
            if rate and not row["holds"] and results["limits"]:
                # Below the limit and at what the machine does unlimited: not the limit.
                capacity = results["limits"][0]["mib_s"] * MiB
                row["capacity_bound"] = measured < rate and capacity < rate * (
                    1 + args.bandwidth_tolerance
                )
            results["limits"].append(row)
            print(f"  {label}: {row}", flush=True)
            for path in sorted(root.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
    return results


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            r["limit"],
            f"{r['bytes'] / MiB:.0f}",
            r["seconds"],
            r["mib_s"],
            "" if r["error"] is None else f"{100 * r['error']:+.1f}%",
            ""
            if r["holds"] is None
            else "yes"
            if r["holds"]
            else "no: the machine's own rate is lower"
            if r.get("capacity_bound")
            else "NO",
        ]
        for r in results["limits"]
    ]
    tolerance = 100 * results["tolerance"]
    return "\n".join(
        [
            "Upload rate under bandwidth_limit (SeaweedFS, lean S3 client; holds: within "
            f"{tolerance:.0f}%)",
            common.table(["limit", "MiB", "s", "MiB/s", "error", "holds"], rows),
        ]
    )


def main() -> None:
    common.run_alone("bandwidth", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
