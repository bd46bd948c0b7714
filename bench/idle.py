"""The idle cost of a running sidecar: RSS and CPU seconds while nothing changes.

``trialsync sync --root ... --upload-dir s3://...`` runs as a process (worker role, default
settings) over an empty root, then over a ``--files`` tree that is already uploaded (one
inotify watch per dir). After it is ready and has published everything, VmRSS and
utime+stime are read from /proc over a ``--window`` of seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, noop
from localcluster.object_stores import S3Server
from tests.support.sidecar_process import Sidecar, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=100_000, help="tree size (100000)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured (30)")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure(server: S3Server, root: Path, url: str, log: Path, window: float) -> dict[str, Any]:
    args = ["--root", str(root), "--upload-dir", url, "--log-level", "warning"]
    started = time.perf_counter()
    sidecar = Sidecar.start(args, common.trialsync_env(server), str(log))
    try:
        wait_for(lambda: sidecar.get("/readyz")[0] == 200, 600, 0.2, "readiness")
        ready_s = time.perf_counter() - started
        wait_for(
            lambda: (
                sidecar.metric("trialsync_pending_checkpoints") == 0
                and sidecar.metric("trialsync_pending_files") == 0
            ),
            600,
            0.5,
            "nothing pending",
        )
        time.sleep(5)  # let start-up garbage settle
        pid = sidecar.proc.pid
        cpu0, rss0 = cpu_seconds(pid), status_kib(pid, "VmRSS")
        time.sleep(window)
        cpu1, rss1 = cpu_seconds(pid), status_kib(pid, "VmRSS")
        hwm = status_kib(pid, "VmHWM")
        uploaded = sidecar.metric("trialsync_uploaded_files_total")
    finally:
        code = sidecar.stop()
    return {
        "ready_s": ready_s,
        "rss_mib_start": rss0 / 1024,
        "rss_mib_end": rss1 / 1024,
        "rss_peak_mib": hwm / 1024,
        "cpu_s_in_window": cpu1 - cpu0,
        "cpu_percent": 100 * (cpu1 - cpu0) / window,
        "files_uploaded_by_sidecar": uploaded,
        "exit_code": code,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"window_s": args.window}
    with common.scratch("idle") as work, common.seaweedfs(work / "seaweedfs") as server:
        bucket = server.make_bucket()
        empty = work / "empty"
        empty.mkdir()
        results["empty"] = measure(
            server, empty, f"s3://{bucket}/empty", work / "a.log", args.window
        )
        print(f"  empty root: {results['empty']}", flush=True)
        root = work / "root"
        files, _ = noop.make_tree(root, args.files)
        url = f"s3://{bucket}/tree"
        results["first_upload_s"] = noop.seed(server, root, url)
        results["files"] = files
        results["tree"] = measure(server, root, url, work / "b.log", args.window)
        print(f"  {files}-file tree: {results['tree']}", flush=True)
    return results


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            label,
            r["ready_s"],
            r["rss_mib_end"],
            r["rss_peak_mib"],
            r["cpu_s_in_window"],
            r["cpu_percent"],
        ]
        for label, r in (
            ("empty root", results["empty"]),
            (f"{results['files']} files", results["tree"]),
        )
    ]
    return "\n".join(
        [
            f"Idle sidecar over {results['window_s']:.0f} s (after ready + 5 s)",
            common.table(["root", "ready s", "RSS MiB", "peak RSS MiB", "CPU s", "CPU %"], rows),
        ]
    )


def main() -> None:
    common.run_alone("idle", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
