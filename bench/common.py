"""Shared helpers for the benchmarks: servers, trees, timing, verification, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from localcluster.object_stores import S3Server, start_seaweedfs

MIB = 2**20
MANIFEST_SUFFIX = "/.trialsync-manifest.json"


@contextlib.contextmanager
def scratch(prefix: str, parent: str = "/tmp") -> Iterator[Path]:
    """A temp dir under ``parent`` (/tmp; /dev/shm for one in memory), removed afterwards
    (also on Ctrl-C)."""
    path = Path(tempfile.mkdtemp(prefix=f"trialsync-bench-{prefix}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """A SeaweedFS server on loopback with its data in ``workdir``; always stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_seaweedfs(workdir)
    try:
        yield server
    finally:
        server.stop()


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait for the sidecar ``process`` on ``port`` to answer /readyz 200; its log tail if
    it exits or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the sidecar is not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def trialsync_env(server: S3Server) -> dict[str, str]:
    """The environment a ``trialsync`` process needs to reach ``server``."""
    return {
        **os.environ,
        **server.env(),
        "TRIALSYNC_STORAGE_OPTIONS": json.dumps(server.sidecar_options()),
        # The caller's PYTHONPATH first, so a scratch copy of trialsync can be measured.
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parents[1])) if p
        ),
    }


def trialsync_once(root: Path, url: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trialsync.cli",
        "sync",
        "--once",
        "--root",
        str(root),
        "--upload-dir",
        url,
        "--log-level",
        "warning",
        "--final-sync-timeout",
        "3600",
        *extra,
    ]


class Run(NamedTuple):
    seconds: float  # wall time
    output: str  # stdout + stderr
    cpu: float  # user + system CPU seconds of the command and its children


def timed(argv: Sequence[str], env: dict[str, str], timeout: float = 3600) -> Run:
    """Run ``argv``; its wall time, combined output and CPU time. Fails on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=env, capture_output=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {done.returncode}:\n{output[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Run(elapsed, output, cpu)


@dataclass(frozen=True)
class Landed:
    objects: int
    bytes: int
    manifests: int


def landed(server: S3Server, bucket: str, prefix: str) -> Landed:
    """What is stored under ``bucket/prefix/``; trialsync's manifests counted apart, and
    the empty ``dir/`` objects pyarrow makes for directories not at all."""
    client = server.client()
    objects = size = manifests = 0
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.strip("/") + "/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(MANIFEST_SUFFIX):
                    manifests += 1
                elif obj["Key"].endswith("/") and not obj["Size"]:
                    continue
                else:
                    objects += 1
                    size += int(obj["Size"])
    finally:
        client.close()
    return Landed(objects, size, manifests)


def tree_stats(root: Path, skip: str = "") -> tuple[int, int]:
    """(files, bytes) below ``root``, but files named ``skip``."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name != skip:
                files += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def warm(root: Path) -> None:
    """Read every file once so every tool starts from a warm page cache."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as handle:
                while handle.read(8 * MIB):
                    pass


def write_small_files(paths: Sequence[Path], low: int, high: int, seed: int) -> int:
    """Write files of random sizes in [low, high] bytes; returns the total bytes."""
    rng = random.Random(seed)
    block = os.urandom(high)
    total = 0
    for path in paths:
        size = rng.randint(low, high)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A random offset into one random block: incompressible, and distinct enough.
        start = rng.randint(0, high - size)
        path.write_bytes(block[start : start + size])
        total += size
    return total


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def write_results(name: str, results: dict[str, Any]) -> Path:
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def run_alone(
    name: str,
    doc: str | None,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    *add_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    """A benchmark run as a script of its own: its options, its run, its table, and its
    JSON written as ``bench/results/<name>-<timestamp>.json``."""
    parser = argparse.ArgumentParser(description=doc)
    for add in add_arguments:
        add(parser)
    results = run(parser.parse_args())
    print(report(results))
    print(f"results: {write_results(name, results)}")
