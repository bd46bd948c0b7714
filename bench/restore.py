"""Restore throughput of one checkpoint: trialsync's restore vs s5cmd cp, rclone, aws s3 cp
and pyarrow.

The checkpoint is the throughput benchmark's (four large files and ``--small-files``
small ones, ``--size-mib`` in all), published once by ``trialsync sync --once``. Then, on
the same SeaweedFS, ``--repeat`` times in rotating order, each tool downloads it into a
fresh directory, timed as a whole process:

- ``trialsync``: the restore a sidecar makes at start (``--restore``; the newest complete
  checkpoint, checked against its manifest, written aside and renamed into place), run
  alone, as a sidecar starts and makes it (``_TRIALSYNC``). Its time as a process includes
  the interpreter's start, the imports and the store's client (about 0.4 s), which a
  sidecar pays whether it restores or not; the restore's own time is reported too;
- ``s5cmd cp``: ``s5cmd cp 's3://bucket/prefix/*' dir/`` (its defaults);
- ``rclone copy`` and ``aws s3 cp --recursive``, tuned as for the upload benchmark
  (``tests/support/peers.py``);
- ``pyarrow``: ``pyarrow.fs.copy_files`` from an ``S3FileSystem``, what Ray uses to
  download a checkpoint.

Every run is checked for the right file count and bytes, and starts with the page cache
flushed (``sync``), so that no run pays for the writeback of the one before. The target:
trialsync at least as fast as s5cmd.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, throughput
from localcluster.object_stores import S3Server
from tests.support import peers

TOOLS = ("trialsync", "s5cmd cp", "rclone copy", "aws s3 cp", "pyarrow")
MANIFEST_NAME = common.MANIFEST_SUFFIX.lstrip("/")
PREFIX = "published"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restore-repeat", type=int, default=3, help="runs per tool (3)")


# One restore of everything under the URL into the dir, as a sidecar starts and makes it.
# It exits at once: a sidecar goes on syncing, so the interpreter's teardown is no part
# of its restore.
_TRIALSYNC = """
import asyncio, os, sys, time
from trialsync import cli
cli.start_without_collecting()
from trialsync._process.settings import parse
from trialsync._process.sidecar import build_store, restorer_for
dest, url = sys.argv[1:]
settings = parse(["--root", dest, "--upload-dir", url, "--restore"], os.environ)
cli.started()

async def restore():
    store = build_store(settings)
    try:
        await store.connect()  # a sidecar connects whether it restores or not
        started = time.perf_counter()
        await restorer_for(settings, store).run()
        return time.perf_counter() - started
    finally:
        await store.close()

print(f"restored in {asyncio.run(restore()):.3f} s", flush=True)
os._exit(0)
"""


def _trialsync(server: S3Server, url: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-c", _TRIALSYNC, str(dest), url]
    return argv, common.trialsync_env(server)


def _s5cmd(server: S3Server, url: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    argv = [
        peers.tool("s5cmd"),
        "--endpoint-url",
        server.endpoint_url,
        "--log",
        "error",
        "cp",
        f"{url}/*",
        f"{dest}/",
    ]
    return argv, {**os.environ, **server.env()}


_PYARROW = """
import sys
from pyarrow import fs
endpoint, region, source, dest = sys.argv[1:]
s3 = fs.S3FileSystem(endpoint_override=endpoint, region=region, scheme="http")
fs.copy_files(source, dest, source_filesystem=s3, use_threads=True)
"""


def _pyarrow(server: S3Server, url: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    source = url.removeprefix("s3://")
    endpoint = server.endpoint_url.removeprefix("http://")
    argv = [sys.executable, "-c", _PYARROW, endpoint, server.region, source, str(dest)]
    return argv, {**os.environ, **server.env()}


def _aws(server: S3Server, url: str, dest: Path) -> tuple[list[str], dict[str, str]]:
    return peers.aws_s3_download(server, url, dest, config_dir=dest.parent)


BUILDERS = {
    "trialsync": _trialsync,
    "s5cmd cp": _s5cmd,
    "rclone copy": peers.rclone_download,
    "aws s3 cp": _aws,
    "pyarrow": _pyarrow,
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("restore") as work:
        src = work / "src"
        files, size = throughput.make_checkpoint(src, args.size_mib, args.small_files)
        mib = size / common.MIB
        print(f"checkpoint: {files} files, {mib:.1f} MiB", flush=True)
        with common.seaweedfs(work / "seaweedfs") as server:
            bucket = server.make_bucket()
            url = f"s3://{bucket}/{PREFIX}"
            common.timed(common.trialsync_once(src, url), common.trialsync_env(server))
            times: dict[str, list[float]] = {name: [] for name in TOOLS}
            cpus: dict[str, list[float]] = {name: [] for name in TOOLS}
            inside: list[float] = []  # trialsync's restore alone, without the process start
            for i in range(args.restore_repeat):
                order = TOOLS[i % len(TOOLS) :] + TOOLS[: i % len(TOOLS)]
                for name in order:
                    dest = work / f"dest-{i}-{name.split()[0]}"
                    dest.mkdir()
                    os.sync()  # no dirty pages of the last run for this one's fsyncs to wait on
                    argv, env = BUILDERS[name](server, url, dest)
                    done = common.timed(argv, env)
                    got = common.tree_stats(dest, skip=MANIFEST_NAME)  # the peers copy it too
                    if got != (files, size):
                        raise RuntimeError(f"{name}: restored {got}, expected {(files, size)}")
                    times[name].append(done.seconds)
                    cpus[name].append(done.cpu)
                    if name == "trialsync":
                        inside.append(float(done.output.split("restored in ")[1].split()[0]))
                    print(
                        f"  {name:10s} run {i}: {done.seconds:6.2f} s  "
                        f"{mib / done.seconds:7.1f} MiB/s  client CPU {done.cpu:5.2f} s",
                        flush=True,
                    )
                    shutil.rmtree(dest)
    medians = {name: common.median(t) for name, t in times.items()}
    restore_s = common.median(inside)
    return {
        "files": files,
        "bytes": size,
        "repeat": args.restore_repeat,
        "tools": {
            name: {
                "median_s": medians[name],
                "mib_per_s": mib / medians[name],
                "runs_s": times[name],
                "client_cpu_s": common.median(cpus[name]),
            }
            for name in TOOLS
        },
        "trialsync_restore_s": restore_s,
        "trialsync_restore_runs_s": inside,
        "trialsync_over_s5cmd_throughput": medians["s5cmd cp"] / medians["trialsync"],
        "restore_over_s5cmd_throughput": medians["s5cmd cp"] / restore_s,
    }


def report(results: dict[str, Any]) -> str:
    rows = [
        [name, row["median_s"], row["mib_per_s"], row["client_cpu_s"]]
        for name, row in results["tools"].items()
    ]
    return "\n".join(
        [
            f"Restore: {results['files']} files, {results['bytes'] / common.MIB:.0f} MiB, "
            f"median of {results['repeat']} (each a whole process, into a fresh directory)",
            common.table(["tool", "median s", "MiB/s", "client CPU s"], rows),
            f"trialsync's restore alone (as a sidecar makes it, once started): "
            f"{results['trialsync_restore_s']:.3f} s, "
            f"{results['bytes'] / common.MIB / results['trialsync_restore_s']:.1f} MiB/s",
            f"throughput / s5cmd cp: the restore {results['restore_over_s5cmd_throughput']:.2f}x"
            f", the whole process {results['trialsync_over_s5cmd_throughput']:.2f}x (target: at "
            "least 1.0x)",
        ]
    )


def main() -> None:
    common.run_alone("restore", __doc__, run, report, throughput.add_arguments, add_arguments)


if __name__ == "__main__":
    main()
