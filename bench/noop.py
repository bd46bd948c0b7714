"""The cost of a sync when nothing changed, over a large tree that is already uploaded.

The tree is ``--files`` small files (default 100,000): trials of 1,000 files each, a tenth
artifacts and the rest in nine checkpoint dirs. It is uploaded once (``trialsync sync
--once``; timed), then, in process, a real ``SyncEngine`` fed by a real ``InotifyJournal``:

* steady state: a round of experiment + artifact files with no due checkpoints, repeated;
* one change: a round after one artifact file was rewritten (uploads exactly that file);
* full rescan: ``Round(full=True)`` (stat walk + ledger compare, no remote listing);
* restart: a fresh engine's ``recover()`` (one remote listing + one local walk).

Then the peers' no-op over the same tree and prefix: ``s5cmd sync``, ``rclone copy
--size-only`` and ``aws s3 sync`` (each must list the remote and stat every local file).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from localcluster.object_stores import S3Server
from tests.support import peers
from trialsync._engine.engine import EngineOptions, Round, SyncEngine
from trialsync._engine.layout import Kind
from trialsync._engine.watcher import InotifyJournal
from trialsync._stores.fsspec_store import RemoteStore
from trialsync.metrics import Metrics

ALL = frozenset({Kind.EXPERIMENT, Kind.ARTIFACT})
SETTLE = 3.0  # the sidecar's default --checkpoint-settle
PER_TRIAL = 1000
CHECKPOINTS_PER_TRIAL = 9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=100_000, help="tree size (100000)")
    parser.add_argument("--rounds", type=int, default=200, help="no-op rounds timed (200)")
    parser.add_argument("--rescans", type=int, default=5, help="full rescans timed (5)")
    parser.add_argument("--recovers", type=int, default=3, help="fresh recover()s timed (3)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers' no-op")


def make_tree(root: Path, files: int) -> tuple[int, int]:
    """``exp/trial_NNNNN/`` dirs of artifacts and checkpoint dirs; (files, bytes)."""
    trials = max(1, math.ceil(files / PER_TRIAL))
    per_trial = max(CHECKPOINTS_PER_TRIAL + 1, files // trials)
    artifacts = max(1, per_trial // 10)
    per_ckpt = (per_trial - artifacts) // CHECKPOINTS_PER_TRIAL
    artifacts = per_trial - per_ckpt * CHECKPOINTS_PER_TRIAL
    # No experiment-level files: those are the head's (role=head), and this is a worker.
    paths: list[Path] = []
    for t in range(trials):
        trial = root / "exp" / f"trial_{t:05d}"
        paths += [trial / "result.json", trial / "params.json"]
        paths += [trial / "logs" / f"events_{i:04d}.log" for i in range(artifacts - 2)]
        for c in range(1, CHECKPOINTS_PER_TRIAL + 1):
            ckpt = trial / f"checkpoint_{c:06d}"
            paths += [ckpt / f"shard_{i:04d}.bin" for i in range(per_ckpt)]
    common.write_small_files(paths, 100, 4096, seed=2)
    return common.tree_stats(root)


def seed(server: S3Server, root: Path, url: str) -> float:
    """The first upload, by trialsync itself; wall seconds."""
    seconds = common.timed(common.trialsync_once(root, url), common.trialsync_env(server)).seconds
    return seconds


class CountingStore(RemoteStore):
    """The real store, counting remote operations (a no-op must make none)."""

    calls = 0

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        self.calls += 1
        await super().put_file(local_path, rel, size)

    async def put_bytes(self, rel: str, data: bytes) -> None:
        self.calls += 1
        await super().put_bytes(rel, data)

    async def list(self, rel_prefix: str = "") -> Any:
        self.calls += 1
        return await super().list(rel_prefix)


def _ms(seconds: list[float]) -> dict[str, float]:
    return {
        "median_ms": common.median(seconds) * 1e3,
        "p99_ms": common.percentile(seconds, 0.99) * 1e3,
        "max_ms": max(seconds) * 1e3,
    }


async def measure_engine(
    server: S3Server,
    root: Path,
    url: str,
    files: int,
    args: argparse.Namespace,
    before_changes: Callable[[], Any],
) -> dict[str, Any]:
    """Time the engine; ``before_changes`` runs before any file is changed (the peers)."""
    options = server.storage_options()
    recovers = []
    for _ in range(args.recovers):
        store = CountingStore(url, options)
        engine = SyncEngine(EngineOptions(root=str(root)), store, Metrics())
        started = time.perf_counter()
        await engine.recover(SETTLE)
        recovers.append(time.perf_counter() - started)
        await store.close()
        if len(engine.ledger) != files or engine.dirty or engine.activity:
            raise RuntimeError(
                f"recover() found {len(engine.ledger)}/{files} uploaded, "
                f"{len(engine.dirty)} dirty, {len(engine.activity)} pending checkpoints"
            )
    store = CountingStore(url, options)
    engine = SyncEngine(EngineOptions(root=str(root)), store, Metrics())
    journal = InotifyJournal(str(root))
    loop = asyncio.get_running_loop()
    try:
        started = time.perf_counter()
        await journal.start(engine.note_change, engine.note_overflow)
        watch_s = time.perf_counter() - started
        await engine.recover(SETTLE)
        await engine.run(Round(full=True), SETTLE)
        store.calls = 0
        noop = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            due = engine.settled_checkpoints(loop.time(), SETTLE)
            await engine.run(Round(checkpoints=due, kinds=ALL), SETTLE)
            noop.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # let the journal's reader run, as the sidecar's loop does
        rescans = []
        for _ in range(args.rescans):
            started = time.perf_counter()
            await engine.run(Round(full=True), SETTLE)
            rescans.append(time.perf_counter() - started)
        if store.calls:
            raise RuntimeError(f"a no-op round made {store.calls} remote calls")
        peer = before_changes()
        changed = []
        target = root / "exp" / "trial_00000" / "result.json"
        for i in range(20):
            target.write_text(f'{{"loss": {1 / (i + 1)}}}\n')
            await asyncio.sleep(0.05)  # inotify delivery, not timed
            started = time.perf_counter()
            await engine.run(Round(kinds=ALL), SETTLE)
            changed.append(time.perf_counter() - started)
        if store.calls != 20:
            raise RuntimeError(f"20 one-file changes made {store.calls} remote calls")
    finally:
        journal.close()
        await store.close()
    return {
        "inotify_watched_dirs": journal.watched_dirs,
        "inotify_watch_setup_s": watch_s,
        "steady_noop": {"rounds": len(noop), **_ms(noop)},
        "one_change": {"rounds": len(changed), **_ms(changed)},
        "full_rescan": {"rounds": len(rescans), **_ms(rescans)},
        "recover_s": {"median": common.median(recovers), "runs": recovers},
        "peers": peer,
    }


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def peers_noop(server: S3Server, root: Path, bucket: str, prefix: str, work: Path) -> Any:
    url = f"s3://{bucket}/{prefix}"
    s5 = [
        peers.tool("s5cmd"),
        "--endpoint-url",
        server.endpoint_url,
        "sync",
        f"{root}/",
        f"{url}/",
    ]
    _, rclone_env = peers.rclone_copy(server, root, url)
    rclone = [
        peers.tool("rclone"),
        "copy",
        str(root),
        f"{peers.RCLONE_REMOTE}:{bucket}/{prefix}",
        "--size-only",
        "--checkers",
        "32",
        "--transfers",
        "32",
        "--stats",
        "0",
        "--log-level",
        "INFO",
    ]
    _, aws_env = peers.aws_s3_cp(server, root, url, config_dir=work)
    aws = [
        peers.tool("aws"),
        "s3",
        "sync",
        "--no-progress",
        "--endpoint-url",
        server.endpoint_url,
        str(root),
        url,
    ]
    runs = {
        "s5cmd sync": (s5, {**os.environ, **server.env()}, r"^cp "),
        "rclone copy --size-only": (rclone, rclone_env, r": Copied"),
        "aws s3 sync": (aws, aws_env, r"^upload: "),
    }
    results = {}
    for name, (argv, env, uploaded) in runs.items():
        seconds, output, _ = common.timed(argv, env)
        results[name] = {"seconds": seconds, "uploaded": _count(uploaded, output)}
        print(f"  {name}: {seconds:.2f} s, uploaded {results[name]['uploaded']}", flush=True)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("noop") as work:
        root = work / "root"
        started = time.perf_counter()
        files, size = make_tree(root, args.files)
        print(
            f"tree: {files} files, {size / common.MIB:.1f} MiB, "
            f"written in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        with common.seaweedfs(work / "seaweedfs") as server:
            bucket = server.make_bucket()
            url = f"s3://{bucket}/noop"
            seed_s = seed(server, root, url)
            got = common.landed(server, bucket, "noop")
            if (got.objects, got.bytes) != (files, size):
                raise RuntimeError(f"first upload landed {got}, expected {files} / {size}")
            print(
                f"  first upload (trialsync --once): {seed_s:.1f} s, "
                f"{got.manifests} checkpoints published",
                flush=True,
            )
            argv, env = peers.s5cmd_cp(server, root, f"s3://{bucket}/s5cmd")
            s5cmd_s = common.timed(argv, env).seconds
            print(f"  first upload (s5cmd cp, for comparison): {s5cmd_s:.1f} s", flush=True)
            argv, env = peers.rclone_copy(server, root, f"s3://{bucket}/rclone")
            rclone_s = common.timed(argv, env).seconds
            print(f"  first upload (rclone copy, for comparison): {rclone_s:.1f} s", flush=True)

            def run_peers() -> Any:
                return {} if args.no_peers else peers_noop(server, root, bucket, "noop", work)

            engine = asyncio.run(measure_engine(server, root, url, files, args, run_peers))
    return {
        "files": files,
        "bytes": size,
        "first_upload_s": seed_s,
        "first_upload_files_per_s": files / seed_s,
        "checkpoints": got.manifests,
        "first_upload_s5cmd_s": s5cmd_s,
        "first_upload_rclone_s": rclone_s,
        "first_upload_over_s5cmd_throughput": s5cmd_s / seed_s,
        **engine,
    }


def report(results: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            "trialsync steady no-op round",
            results["steady_noop"]["median_ms"],
            results["steady_noop"]["p99_ms"],
            "ms",
        ],
        [
            "trialsync one-change round",
            results["one_change"]["median_ms"],
            results["one_change"]["p99_ms"],
            "ms",
        ],
        [
            "trialsync full rescan (fallback)",
            results["full_rescan"]["median_ms"],
            results["full_rescan"]["max_ms"],
            "ms (max)",
        ],
        [
            "trialsync recover() (restart)",
            results["recover_s"]["median"],
            max(results["recover_s"]["runs"]),
            "s (max)",
        ],
    ]
    for name, peer in results["peers"].items():
        rows.append([f"{name} (uploaded {peer['uploaded']})", peer["seconds"], "", "s"])
    return "\n".join(
        [
            f"No-op sync over {results['files']} files "
            f"({results['inotify_watched_dirs']} dirs watched; first upload by trialsync "
            f"{results['first_upload_s']:.1f} s = {results['first_upload_files_per_s']:.0f} "
            f"files/s; of the same tree, s5cmd cp {results['first_upload_s5cmd_s']:.1f} s and "
            f"rclone copy {results['first_upload_rclone_s']:.1f} s: trialsync's throughput "
            f"{results['first_upload_over_s5cmd_throughput']:.2f}x s5cmd's)",
            common.table(["what", "median", "p99/max", "unit"], rows),
        ]
    )


def main() -> None:
    common.run_alone("noop", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
