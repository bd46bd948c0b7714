"""Large files: a checkpoint of four 256 MiB files, trialsync vs pyarrow (as Ray uploads) and
s5cmd, on the same SeaweedFS.

Each tool uploads ``exp/trial_00000/checkpoint_000001/model_{0..3}.pt`` (``--large-mib`` in
all) to a fresh prefix, ``--large-repeat`` times in rotating order, from a warm page cache
and after one untimed upload (a new bucket's first writes make its volumes), each run
checked for its objects and bytes:

- ``trialsync --once``: ``trialsync sync --once``, timed as a whole process (interpreter start
  and imports included);
- ``pyarrow``: ``pyarrow.fs.copy_files`` with Ray 2.60's settings, also a whole process;
- ``s5cmd cp``: its defaults.

And trialsync as a sidecar makes it: a running ``trialsync sync`` on a volume; each repeat
writes a new checkpoint there (a copy of the same files) and polls the store for its
manifest, which is written last. The figure is from the checkpoint complete (its last file
closed) to the manifest seen, minus the settle window (``--checkpoint-settle``, 1 s here):
the transfer as a trainer's checkpoint gets it, from a sidecar already started.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, throughput
from localcluster.object_stores import S3Server
from localcluster.processes import free_port
from tests.support.checkpoint_audit import still_there

TOOLS = ("trialsync --once", "pyarrow", "s5cmd cp")
BUILDERS = {
    "trialsync --once": throughput.trialsync_builder([]),
    "pyarrow": throughput.TOOLS["pyarrow"],
    "s5cmd cp": throughput.TOOLS["s5cmd cp"],
}
SIDECAR = "trialsync sidecar"
SETTLE_S = 1.0
POLL_S = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--large-mib", type=int, default=1024, help="checkpoint size (1024)")
    parser.add_argument("--large-repeat", type=int, default=3, help="runs per tool (3)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("large") as work:
        src = work / "src"
        files, size = throughput.make_checkpoint(src, args.large_mib, 0)
        mib = size / common.MIB
        print(f"checkpoint: {files} files, {mib:.1f} MiB", flush=True)
        with common.seaweedfs(work / "seaweedfs") as server:
            bucket = server.make_bucket()
            common.warm(src)
            # Untimed: the server's first writes to a bucket also make its volumes.
            throughput.upload_once(
                server, bucket, "warm-up", BUILDERS["s5cmd cp"], src, work, (files, size), False
            )
            times: dict[str, list[float]] = {name: [] for name in (*TOOLS, SIDECAR)}
            for i in range(args.large_repeat):
                order = TOOLS[i % len(TOOLS) :] + TOOLS[: i % len(TOOLS)]
                for name in order:
                    done = throughput.upload_once(
                        server,
                        bucket,
                        f"run{i}-{name.split()[0]}",
                        BUILDERS[name],
                        src,
                        work,
                        (files, size),
                        name.startswith("trialsync"),
                    )
                    times[name].append(done.seconds)
                    _print(name, i, done.seconds, mib)
            for i, seconds in enumerate(_sidecar_runs(server, bucket, src, work, args)):
                times[SIDECAR].append(seconds)
                _print(SIDECAR, i, seconds, mib)
    medians = {name: common.median(t) for name, t in times.items()}
    return {
        "files": files,
        "bytes": size,
        "repeat": args.large_repeat,
        "settle_s": SETTLE_S,
        "tools": {
            name: {"median_s": s, "mib_per_s": mib / s, "runs_s": times[name]}
            for name, s in medians.items()
        },
        "once_over_pyarrow_throughput": medians["pyarrow"] / medians["trialsync --once"],
        "sidecar_over_pyarrow_throughput": medians["pyarrow"] / medians[SIDECAR],
        "once_over_s5cmd_throughput": medians["s5cmd cp"] / medians["trialsync --once"],
    }


def _print(name: str, i: int, seconds: float, mib: float) -> None:
    print(f"  {name:18s} run {i}: {seconds:6.2f} s  {mib / seconds:7.1f} MiB/s", flush=True)


def _sidecar_runs(
    server: S3Server, bucket: str, src: Path, work: Path, args: argparse.Namespace
) -> list[float]:
    """Per repeat: checkpoint complete to manifest seen, minus the settle window."""
    volume = work / "volume"
    volume.mkdir()
    port = free_port()
    argv = [
        *common.trialsync_once(volume, f"s3://{bucket}/sidecar"),
        "--no-once",
        "--checkpoint-settle",
        str(SETTLE_S),
        "--http-addr",
        f"127.0.0.1:{port}",
    ]
    with open(work / "sidecar.log", "wb") as log:
        sidecar = subprocess.Popen(argv, env=common.trialsync_env(server), stderr=log)
        try:
            common.wait_ready(port, sidecar, work / "sidecar.log")
            client = server.client()
            seconds = []
            for i in range(args.large_repeat):
                rel = f"{throughput.CHECKPOINT[: -len('000001')]}{i + 2:06d}"
                shutil.copytree(src / throughput.CHECKPOINT, volume / rel)
                complete = time.monotonic()  # copytree returns after the last close
                key = f"sidecar/{rel}{common.MANIFEST_SUFFIX}"
                deadline = complete + 600
                while not still_there(client, bucket, key):
                    if time.monotonic() > deadline or sidecar.poll() is not None:
                        raise RuntimeError((work / "sidecar.log").read_text()[-3000:])
                    time.sleep(POLL_S)
                seconds.append(time.monotonic() - complete - SETTLE_S)
            client.close()
            return seconds
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=60)


def report(results: dict[str, Any]) -> str:
    rows = [[name, row["median_s"], row["mib_per_s"]] for name, row in results["tools"].items()]
    return "\n".join(
        [
            f"Large files: {results['files']} files, {results['bytes'] / common.MIB:.0f} MiB, "
            f"median of {results['repeat']}",
            common.table(["tool", "median s", "MiB/s"], rows),
            f"throughput / pyarrow: --once {results['once_over_pyarrow_throughput']:.2f}x, "
            f"in a running sidecar (minus the {results['settle_s']:.0f} s settle) "
            f"{results['sidecar_over_pyarrow_throughput']:.2f}x (target: at least 1.0x); "
            f"--once / s5cmd {results['once_over_s5cmd_throughput']:.2f}x",
        ]
    )


def main() -> None:
    common.run_alone("large", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
