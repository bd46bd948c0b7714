"""The Ray side of ``bench/ray_checkpoint.py``: one run of Ray reporting checkpoints.

Runs in a Python with Ray (not the project's venv), started by ``ray_checkpoint.py``:

    python bench/ray_trainer.py MODE --source DIR --storage PATH --out FILE [--repeat N]

Each run starts a local Ray, and a trainer reports ``--repeat`` checkpoints, each a copy
of ``--source``. Around each ``report`` it measures how long the call blocked, then
polls the store until the checkpoint is durable, and writes both per checkpoint to
``--out`` (JSON). MODE is what writes the checkpoint:

- ``tune``: Ray Tune's own upload: ``storage_path`` is the bucket (``tune.report``
  returns once the upload is done);
- ``train-async``: Ray Train V2 with ``CheckpointUploadMode.ASYNC``: the upload runs in
  the background after ``ray.train.report`` returns;
- ``trialsync``: Tune with trialsync's storage filesystem on a local volume, beside a
  running trialsync sidecar (``--sidecar URL``) that uploads it.

Durable means: the checkpoint's files all in the bucket with their full size (Ray's
modes), or its trialsync manifest there (which is written last, after every file).
The store is reached with ``AWS_*`` and ``S3_ENDPOINT`` from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

MANIFEST = ".trialsync-manifest.json"
POLL = 0.02


def s3() -> pafs.S3FileSystem:
    endpoint = urlparse(os.environ["S3_ENDPOINT"])
    return pafs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme,
    )


def source_files(source: str) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(d, n), source): os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(source)
        for n in names
    }


def durable(bucket_dir: str, expected: dict[str, int], manifest: bool) -> bool:
    """Whether the checkpoint at ``bucket_dir`` (bucket/key, no scheme) is in the store."""
    fs = s3()
    if manifest:
        (info,) = fs.get_file_info([f"{bucket_dir}/{MANIFEST}"])
        return info.type == pafs.FileType.File
    try:
        infos = fs.get_file_info(pafs.FileSelector(bucket_dir, recursive=True))
    except FileNotFoundError:
        return False
    found = {i.path[len(bucket_dir) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}
    return all(found.get(rel) == size for rel, size in expected.items())


def wait_durable(bucket_dir: str, expected: dict[str, int], manifest: bool) -> float:
    """Poll until durable; the time.time() at which it was seen so."""
    deadline = time.monotonic() + 600
    while not durable(bucket_dir, expected, manifest):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{bucket_dir} not durable after 600 s")
        time.sleep(POLL)
    return time.time()


def staged(source: str) -> str:
    """A fresh copy of the checkpoint, as a trainer writes it before reporting."""
    directory = tempfile.mkdtemp(prefix="ckpt-")
    shutil.copytree(source, directory, dirs_exist_ok=True)
    return directory


def tune_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ray import tune

    expected = source_files(args.source)
    if args.mode == "trialsync":
        from trialsync.ray_storage import storage_filesystem

        storage_path = args.local_root
        filesystem = storage_filesystem(args.local_root, args.sidecar)
    else:
        storage_path, filesystem = args.storage, s3()

    def train(config: dict[str, Any]) -> None:
        for index in range(config["repeat"]):
            directory = staged(config["source"])
            started = time.time()
            tune.report(
                {"index": index, "started": started},
                checkpoint=tune.Checkpoint.from_directory(directory),
            )
            returned = time.time()
            remote = f"{config['bucket_dir']}/checkpoint_{index:06d}"
            seen = wait_durable(remote, expected, manifest=config["mode"] == "trialsync")
            shutil.rmtree(directory, ignore_errors=True)
            with open(config["out"], "a") as handle:
                record = {"blocked_s": returned - started, "durable_s": seen - started}
                handle.write(json.dumps(record) + "\n")

    trial_dir = "trial"
    tuner = tune.Tuner(
        tune.with_resources(train, {"cpu": 1}),
        param_space={
            "repeat": args.repeat,
            "source": args.source,
            "mode": args.mode,
            "out": args.out,
            "bucket_dir": f"{args.bucket_dir}/bench/{trial_dir}",
        },
        run_config=tune.RunConfig(
            name="bench",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
        tune_config=tune.TuneConfig(trial_dirname_creator=lambda _: trial_dir),
    )
    results = tuner.fit()
    if results.num_errors:
        raise RuntimeError(f"the trial failed: {results.errors}")
    return read(args.out)


def train_async_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray.train
    from ray.train import CheckpointUploadMode, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    expected = source_files(args.source)

    def loop(config: dict[str, Any]) -> None:
        for index in range(config["repeat"]):
            directory = staged(config["source"])
            name = f"checkpoint_{index:06d}"
            started = time.time()
            ray.train.report(
                {"index": index},
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=name,
                checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
            )
            returned = time.time()
            seen = wait_durable(f"{config['bucket_dir']}/{name}", expected, manifest=False)
            with open(config["out"], "a") as handle:
                record = {"blocked_s": returned - started, "durable_s": seen - started}
                handle.write(json.dumps(record) + "\n")

    trainer = DataParallelTrainer(
        loop,
        train_loop_config={
            "repeat": args.repeat,
            "source": args.source,
            "out": args.out,
            "bucket_dir": f"{args.bucket_dir}/bench-train",
        },
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(
            name="bench-train", storage_path=args.storage, storage_filesystem=s3()
        ),
    )
    trainer.fit()
    return read(args.out)


def read(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("tune", "train-async", "trialsync"))
    parser.add_argument("--source", required=True, help="the checkpoint dir to report")
    parser.add_argument("--storage", required=True, help="bucket/prefix (no scheme)")
    parser.add_argument("--local-root", help="trialsync: the trial volume (storage_path)")
    parser.add_argument("--sidecar", help="trialsync: the sidecar's URL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Where the checkpoints land in the bucket: the trialsync sidecar mirrors the volume
    # under its upload dir, which the orchestrator makes this same bucket/prefix.
    args.bucket_dir = args.storage
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = train_async_run(args) if args.mode == "train-async" else tune_run(args)
    finally:
        ray.shutdown()
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
