"""Upload throughput of one checkpoint: trialsync --once vs s5cmd, rclone, aws s3 cp and
pyarrow (``pyarrow.fs.copy_files`` as Ray 2.60 calls it to upload a checkpoint).

The checkpoint is ``exp/trial_00000/checkpoint_000001/``: four large files plus
``--small-files`` files of 2-50 KiB, ``--size-mib`` in all. Every tool uploads it to a fresh
prefix on the same SeaweedFS server, ``--repeat`` times in rotating order, from a warm page
cache; every run is checked for the right object count and bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from localcluster.object_stores import S3Server
from tests.support import peers

LARGE_FILES = 4
SMALL_LOW, SMALL_HIGH = 2 * 1024, 50 * 1024
CHECKPOINT = "exp/trial_00000/checkpoint_000001"
# (label, extra trialsync flags) tried besides the defaults; not the headline figure.
TUNING: list[tuple[str, list[str]]] = [
    ("files-in-flight=64", ["--files-in-flight", "64"]),
    ("files-in-flight=8", ["--files-in-flight", "8"]),
    ("part-size=8MiB", ["--part-size", str(8 * common.MIB)]),
    ("part-size=64MiB", ["--part-size", str(64 * common.MIB)]),
]

Builder = Callable[[S3Server, Path, str, Path], tuple[list[str], dict[str, str]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, default=1024, help="checkpoint size (1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (3)")
    parser.add_argument("--small-files", type=int, default=1000, help="small files (1000)")
    parser.add_argument("--no-tuning", action="store_true", help="skip the trialsync knobs")


def make_checkpoint(root: Path, size_mib: int, small_files: int) -> tuple[int, int]:
    ckpt = root / CHECKPOINT
    ckpt.mkdir(parents=True)
    small = [ckpt / f"shard_{i // 100:02d}" / f"part_{i:05d}.bin" for i in range(small_files)]
    small_bytes = common.write_small_files(small, SMALL_LOW, SMALL_HIGH, seed=1)
    large_each = max(0, (size_mib * common.MIB - small_bytes) // LARGE_FILES)
    chunk = os.urandom(8 * common.MIB)
    for k in range(LARGE_FILES):
        with open(ckpt / f"model_{k}.pt", "wb") as out:
            left = large_each
            while left > 0:
                # Rotate the chunk per file so no two large files are identical.
                piece = chunk[k:] + chunk[:k]
                out.write(piece[: min(left, len(piece))])
                left -= len(piece)
    return common.tree_stats(root)


def trialsync_builder(extra: list[str]) -> Builder:
    def build(server: S3Server, src: Path, url: str, _: Path) -> tuple[list[str], dict[str, str]]:
        return common.trialsync_once(src, url, extra), common.trialsync_env(server)

    return build


def _s5cmd(server: S3Server, src: Path, url: str, _: Path) -> tuple[list[str], dict[str, str]]:
    return peers.s5cmd_cp(server, src, url)


def _rclone(server: S3Server, src: Path, url: str, _: Path) -> tuple[list[str], dict[str, str]]:
    return peers.rclone_copy(server, src, url)


def _pyarrow(server: S3Server, src: Path, url: str, _: Path) -> tuple[list[str], dict[str, str]]:
    return peers.pyarrow_copy_files(server, src, url)


def _aws(server: S3Server, src: Path, url: str, work: Path) -> tuple[list[str], dict[str, str]]:
    return peers.aws_s3_cp(server, src, url, config_dir=work)


TOOLS: dict[str, Builder] = {
    "trialsync": trialsync_builder([]),
    "s5cmd cp": _s5cmd,
    "rclone copy": _rclone,
    "aws s3 cp": _aws,
    "pyarrow": _pyarrow,
}


def upload_once(
    server: S3Server,
    bucket: str,
    prefix: str,
    build: Builder,
    src: Path,
    work: Path,
    expect: tuple[int, int],
    manifest: bool,
) -> common.Run:
    argv, env = build(server, src, f"s3://{bucket}/{prefix}", work)
    run = common.timed(argv, env)
    got = common.landed(server, bucket, prefix)
    if (got.objects, got.bytes) != expect or (manifest and got.manifests != 1):
        raise RuntimeError(
            f"{prefix}: expected {expect[0]} objects / {expect[1]} bytes, landed "
            f"{got.objects} / {got.bytes} (manifests: {got.manifests})"
        )
    return run


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("throughput") as work:
        src = work / "src"
        files, size = make_checkpoint(src, args.size_mib, args.small_files)
        print(f"checkpoint: {files} files, {size / common.MIB:.1f} MiB", flush=True)
        mib = size / common.MIB
        with common.seaweedfs(work / "seaweedfs") as server:
            bucket = server.make_bucket()
            common.warm(src)
            times: dict[str, list[float]] = {name: [] for name in TOOLS}
            cpus: dict[str, list[float]] = {name: [] for name in TOOLS}
            names = list(TOOLS)
            for i in range(args.repeat):
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    prefix = f"run{i}-{name.split()[0]}"
                    run = upload_once(
                        server,
                        bucket,
                        prefix,
                        TOOLS[name],
                        src,
                        work,
                        (files, size),
                        name == "trialsync",
                    )
                    times[name].append(run.seconds)
                    cpus[name].append(run.cpu)
                    print(
                        f"  {name:12s} run {i}: {run.seconds:6.2f} s  "
                        f"{mib / run.seconds:7.1f} MiB/s  client CPU {run.cpu:5.2f} s",
                        flush=True,
                    )
            tuning: dict[str, list[float]] = {}
            if not args.no_tuning:
                for label, extra in TUNING:
                    secs = upload_once(
                        server,
                        bucket,
                        f"tune-{label}",
                        trialsync_builder(extra),
                        src,
                        work,
                        (files, size),
                        True,
                    ).seconds
                    tuning[label] = [secs]
                    print(
                        f"  trialsync {label}: {secs:6.2f} s  {mib / secs:7.1f} MiB/s", flush=True
                    )
            startup = common.timed(
                [sys.executable, "-c", "import trialsync._process.sidecar, s3fs"],
                common.trialsync_env(server),
            ).seconds
    medians = {name: common.median(t) for name, t in times.items()}
    fastest_peer = min((n for n in medians if n != "trialsync"), key=lambda n: medians[n])
    rows = {
        name: {
            "median_s": medians[name],
            "mib_per_s": mib / medians[name],
            "runs_s": times[name],
            "client_cpu_s": common.median(cpus[name]),
            "client_cpu_runs_s": cpus[name],
            "ratio_to_trialsync": medians[name] / medians["trialsync"],
        }
        for name in TOOLS
    }
    return {
        "files": files,
        "bytes": size,
        "repeat": args.repeat,
        "tools": rows,
        "fastest_peer": fastest_peer,
        "trialsync_time_over_fastest_peer": medians["trialsync"] / medians[fastest_peer],
        "tuning": {
            label: {"median_s": common.median(t), "mib_per_s": mib / common.median(t)}
            for label, t in tuning.items()
        },
        "trialsync_import_s": startup,
    }


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            name,
            row["median_s"],
            row["mib_per_s"],
            row["median_s"] / results["tools"]["trialsync"]["median_s"],
            row["client_cpu_s"],
        ]
        for name, row in results["tools"].items()
    ]
    text = [
        f"Throughput: {results['files']} files, {results['bytes'] / common.MIB:.0f} MiB, "
        f"median of {results['repeat']}",
        common.table(["tool", "median s", "MiB/s", "time / trialsync", "client CPU s"], rows),
        f"trialsync time / fastest peer ({results['fastest_peer']}): "
        f"{results['trialsync_time_over_fastest_peer']:.2f}x "
        f"(includes {results['trialsync_import_s']:.2f} s interpreter start + imports)",
    ]
    if results["tuning"]:
        text.append(
            common.table(
                ["trialsync knob (1 run)", "s", "MiB/s"],
                [[k, v["median_s"], v["mib_per_s"]] for k, v in results["tuning"].items()],
            )
        )
    return "\n".join(text)


def main() -> None:
    common.run_alone("throughput", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
