"""Upload throughput by store: ``trialsync sync --once`` of the same checkpoint to SeaweedFS
(``s3://``) and to HDFS (the tests' MiniDFSCluster) both ways: at the NameNode's RPC port
(``hdfs://``, hdfs-native) and through WebHDFS (``webhdfs://``).

The checkpoint is ``exp/trial_00000/checkpoint_000001/``: ``--store-files`` files of random
data, ``--store-size-mib`` in all, split evenly. Both servers run on loopback on this machine
(``localcluster/object_stores.py``, ``localcluster/hdfs_server.py``); each run goes to a fresh
prefix, ``--repeat`` times per store in alternating order, from a warm page cache, and is
checked for the right file count, bytes and manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from localcluster.hdfs_server import HdfsServer, start_hdfs
from localcluster.object_stores import S3Server

CHECKPOINT = "exp/trial_00000/checkpoint_000001"
STORES = ("s3", "hdfs", "webhdfs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store-size-mib", type=int, default=256, help="stores: checkpoint size (256)"
    )
    parser.add_argument(
        "--store-files", type=int, default=100, help="stores: files in the checkpoint (100)"
    )


def make_checkpoint(root: Path, size_mib: int, files: int) -> tuple[int, int]:
    ckpt = root / CHECKPOINT
    ckpt.mkdir(parents=True)
    each = size_mib * common.MIB // files
    for i in range(files):
        (ckpt / f"shard_{i:04d}.bin").write_bytes(os.urandom(each))
    return common.tree_stats(root)


def _hdfs_landed(server: HdfsServer, path: str) -> common.Landed:
    fs = server.filesystem()
    objects = size = manifests = 0
    for name, info in fs.find(path, detail=True).items():
        if name.endswith(common.MANIFEST_SUFFIX):
            manifests += 1
        else:
            objects += 1
            size += int(info["size"])
    return common.Landed(objects, size, manifests)


def _upload(
    store: str, s3: S3Server, hdfs: HdfsServer, bucket: str, base: str, src: Path, run: str
) -> tuple[common.Run, common.Landed]:
    if store == "s3":
        url = f"s3://{bucket}/{run}"
        env = common.trialsync_env(s3)
    elif store == "hdfs":
        url = hdfs.url(f"{base}/{run}", "hdfs")
        env = {**common.trialsync_env(s3), "TRIALSYNC_STORAGE_OPTIONS": "{}"}
    else:
        url = hdfs.url(f"{base}/{run}")
        env = {
            **common.trialsync_env(s3),
            "TRIALSYNC_STORAGE_OPTIONS": json.dumps(hdfs.storage_options()),
        }
    timed = common.timed(common.trialsync_once(src, url), env)
    got = common.landed(s3, bucket, run) if store == "s3" else _hdfs_landed(hdfs, f"{base}/{run}")
    return timed, got


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("stores") as work:
        src = work / "src"
        files, size = make_checkpoint(src, args.store_size_mib, args.store_files)
        mib = size / common.MIB
        print(f"checkpoint: {files} files, {mib:.1f} MiB", flush=True)
        times: dict[str, list[float]] = {store: [] for store in STORES}
        cpus: dict[str, list[float]] = {store: [] for store in STORES}
        with common.seaweedfs(work / "seaweedfs") as s3:
            (work / "hdfs").mkdir()
            hdfs = start_hdfs(work / "hdfs")
            try:
                print(f"hdfs started in {hdfs.startup_seconds:.1f} s", flush=True)
                bucket = s3.make_bucket()
                base = hdfs.make_dir()
                common.warm(src)
                for i in range(args.repeat):
                    order = STORES if i % 2 == 0 else STORES[::-1]
                    for store in order:
                        timed, got = _upload(store, s3, hdfs, bucket, base, src, f"run{i}-{store}")
                        if (got.objects, got.bytes, got.manifests) != (files, size, 1):
                            raise RuntimeError(
                                f"{store} run {i}: expected {files} files / {size} bytes and a "
                                f"manifest, landed {got}"
                            )
                        times[store].append(timed.seconds)
                        cpus[store].append(timed.cpu)
                        print(
                            f"  {store:8s} run {i}: {timed.seconds:6.2f} s  "
                            f"{mib / timed.seconds:7.1f} MiB/s  client CPU {timed.cpu:5.2f} s",
                            flush=True,
                        )
            finally:
                hdfs.stop()
    return {
        "files": files,
        "bytes": size,
        "repeat": args.repeat,
        "stores": {
            store: {
                "median_s": common.median(times[store]),
                "mib_per_s": mib / common.median(times[store]),
                "runs_s": times[store],
                "client_cpu_s": common.median(cpus[store]),
            }
            for store in STORES
        },
    }


def report(results: dict[str, Any]) -> str:
    s3 = results["stores"]["s3"]["median_s"]
    rows = [
        [store, row["median_s"], row["mib_per_s"], row["median_s"] / s3, row["client_cpu_s"]]
        for store, row in results["stores"].items()
    ]
    return "\n".join(
        [
            f"Stores: trialsync sync --once, {results['files']} files, "
            f"{results['bytes'] / common.MIB:.0f} MiB, median of {results['repeat']}",
            common.table(["store", "median s", "MiB/s", "time / s3", "client CPU s"], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="runs per store (3)")
    results = run(parser.parse_args())
    print(report(results))
    print(f"results: {common.write_results('stores', results)}")


if __name__ == "__main__":
    main()
