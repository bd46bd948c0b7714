"""How long a Ray trainer waits per checkpoint, and when the checkpoint is durable.

A 1 GiB checkpoint (``--ray-size-mib``, 4 files of random data) reported ``--ray-repeat``
times by a trainer in a local Ray, on the same SeaweedFS:

- ``tune``: Ray Tune's own upload to ``s3://`` (its default: ``tune.report`` uploads);
- ``train-async``: Ray Train V2's ``CheckpointUploadMode.ASYNC`` (the upload in the
  background);
- ``trialsync``: Tune with ``trialsync.ray_storage`` on a local volume and a trialsync
  sidecar beside it, with its default settings (a checkpoint is complete after
  ``checkpoint_settle``, 3 s, without a change).

Also measured: the transfer alone, ``trialsync sync --once`` of the same checkpoint. The
targets: trialsync blocks at least 10x less than Ray's default upload, and its checkpoint
is durable within settle + transfer + 1 s.

Ray comes from a venv of its own (``--ray-python``, else one made once under
``$TRIALSYNC_CACHE/bench/``, pip-installing ``ray[tune]`` at the Ray image's version with
the project's constraints); trialsync's ``ray_storage`` is taken from this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from images.build import RAY_VERSION, cache_dir, digest_of
from localcluster.processes import free_port
from trialsync import contract

REPO = Path(__file__).resolve().parents[1]
MODES = ("tune", "train-async", "trialsync")
FILES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-size-mib", type=int, default=1024, help="checkpoint size (1024)")
    parser.add_argument("--ray-repeat", type=int, default=3, help="checkpoints per mode (3)")
    parser.add_argument("--ray-python", help="a Python with ray[tune] (default: a cached venv)")


def ray_python(given: str | None) -> str:
    """A Python that imports Ray at the Ray image's version."""
    if given:
        return given
    constraints = [REPO / "constraints.txt", REPO / "images" / "constraints.txt"]
    key = digest_of([c.read_text() for c in constraints], RAY_VERSION)
    venv = cache_dir().parent / "bench" / f"ray-{RAY_VERSION}-{key[:12]}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if not done.exists():
        print(f"  making {venv} (ray[tune]=={RAY_VERSION})", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"ray[tune]=={RAY_VERSION}"]
            + [a for c in constraints for a in ("-c", str(c))],
            check=True,
        )
        done.touch()
    return str(python)


def make_checkpoint(directory: Path, size_mib: int) -> None:
    directory.mkdir(parents=True)
    block = os.urandom(common.MIB)
    for index in range(FILES):
        with open(directory / f"shard_{index}.bin", "wb") as handle:
            for _ in range(size_mib // FILES):
                handle.write(os.urandom(16) + block[16:])  # no two MiB alike


def run_mode(
    python: str, mode: str, source: Path, storage: str, env: dict[str, str], args: Any, **extra: str
) -> list[dict[str, float]]:
    out = source.parent / f"{mode}.jsonl"
    argv = [
        python,
        str(REPO / "bench" / "ray_trainer.py"),
        mode,
        "--source",
        str(source),
        "--storage",
        storage,
        "--out",
        str(out),
        "--repeat",
        str(args.ray_repeat),
    ]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", value]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: exited {done.returncode}\n{done.stderr[-4000:]}")
    records: list[dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return records


def run(args: argparse.Namespace) -> dict[str, Any]:
    python = ray_python(args.ray_python)
    results: dict[str, Any] = {
        "size_mib": args.ray_size_mib,
        "repeat": args.ray_repeat,
        "settle_s": contract.CHECKPOINT_SETTLE.default,
        "ray": RAY_VERSION,
    }
    with common.scratch("ray") as work, common.seaweedfs(work / "seaweedfs") as server:
        bucket = server.make_bucket()
        source = work / "source"
        make_checkpoint(source, args.ray_size_mib)
        common.warm(source)
        env = common.trialsync_env(server)

        once = work / "once" / "exp" / "trial" / "checkpoint_000000"
        shutil.copytree(source, once)
        transfer = common.timed(common.trialsync_once(work / "once", f"s3://{bucket}/once"), env)
        results["transfer_s"] = transfer.seconds
        print(f"  trialsync sync --once: {transfer.seconds:.2f} s", flush=True)

        ray_env = {
            **env,
            "S3_ENDPOINT": server.endpoint_url,
            "PYTHONPATH": str(REPO / "sidecar"),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        for mode in MODES:
            if mode == "trialsync":
                records = with_sidecar(python, source, bucket, env, ray_env, args, work)
            else:
                records = run_mode(python, mode, source, f"{bucket}/{mode}", ray_env, args)
            results[mode] = summarize(records)
            print(f"  {mode}: {results[mode]}", flush=True)
    blocked_default = results["tune"]["blocked_s"]
    results["blocking_ratio"] = blocked_default / max(results["trialsync"]["blocked_s"], 1e-9)
    results["durable_bound_s"] = results["settle_s"] + results["transfer_s"] + 1.0
    return results


def with_sidecar(
    python: str,
    source: Path,
    bucket: str,
    env: dict[str, str],
    ray_env: dict[str, str],
    args: Any,
    work: Path,
) -> list[dict[str, float]]:
    """The trialsync mode: a sidecar on a local root, and Tune writing there."""
    root = work / "volume"
    root.mkdir()
    port = free_port()
    log = open(work / "sidecar.log", "wb")  # noqa: SIM115 (closed with the sidecar, below)
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trialsync.cli",
            "sync",
            "--root",
            str(root),
            "--upload-dir",
            f"s3://{bucket}/trialsync",
            "--http-addr",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        env=env,
        stderr=log,
    )
    try:
        common.wait_ready(port, sidecar, work / "sidecar.log")
        return run_mode(
            python,
            "trialsync",
            source,
            f"{bucket}/trialsync",
            ray_env,
            args,
            local_root=str(root),
            sidecar=f"http://127.0.0.1:{port}",
        )
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=60)
        log.close()


def summarize(records: list[dict[str, float]]) -> dict[str, float]:
    return {
        "blocked_s": common.median([r["blocked_s"] for r in records]),
        "durable_s": common.median([r["durable_s"] for r in records]),
        "blocked_max_s": max(r["blocked_s"] for r in records),
        "durable_max_s": max(r["durable_s"] for r in records),
    }


def report(results: dict[str, Any]) -> str:
    rows = [
        [
            mode,
            results[mode]["blocked_s"],
            results[mode]["durable_s"],
            results["tune"]["blocked_s"] / max(results[mode]["blocked_s"], 1e-9),
        ]
        for mode in MODES
    ]
    lines = [
        f"Ray {results['ray']}: a {results['size_mib']} MiB checkpoint reported "
        f"{results['repeat']}x (medians)",
        common.table(
            ["mode", "report blocks s", "durable after s", "less blocking than tune"], rows
        ),
        f"transfer alone (trialsync sync --once): {results['transfer_s']:.2f} s; "
        f"durable bound settle {results['settle_s']} + transfer + 1 = "
        f"{results['durable_bound_s']:.2f} s; trialsync durable after "
        f"{results['trialsync']['durable_s']:.2f} s "
        f"(max {results['trialsync']['durable_max_s']:.2f})",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    print(f"results: {common.write_results('ray', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
