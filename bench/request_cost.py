"""Client CPU per S3 request: the lean client against the botocore (s3fs) path.

In one process, against a local SeaweedFS: ``--puts`` PutObjects of 4 KiB (32 in flight),
then ``--parts`` UploadParts of 16 MiB (4 in flight) of one multipart upload, which is then
aborted. ``time.process_time()`` (this process, every thread) is read around each phase, so
the server's CPU is not counted. Both paths go through ``trialsync._stores.s3_upload.S3Api``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from localcluster.object_stores import S3Server
from trialsync._stores import s3_client, s3_upload

PART = 16 * common.MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--puts", type=int, default=2000, help="small PutObjects (2000)")
    parser.add_argument("--parts", type=int, default=32, help="16 MiB UploadParts (32)")


async def _cpu(work: Callable[[], Awaitable[None]]) -> float:
    started = time.process_time()
    await work()
    return time.process_time() - started


async def _measure(api: s3_upload.S3Api, bucket: str, puts: int, parts: int) -> dict[str, float]:
    small, big = os.urandom(4096), os.urandom(PART)

    async def put_all() -> None:
        gate = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with gate:
                await api.put_object(bucket, f"small/{i}", small)

        await asyncio.gather(*(put(i) for i in range(puts)))

    async def parts_all() -> None:
        upload_id = await api.create_multipart_upload(bucket, "big")
        gate = asyncio.Semaphore(4)

        async def part(n: int) -> None:
            async with gate:
                await api.upload_part(bucket, "big", upload_id, n, big)

        await asyncio.gather(*(part(n) for n in range(1, parts + 1)))
        await api.abort_multipart_upload(bucket, "big", upload_id)

    put_cpu = await _cpu(put_all)
    part_cpu = await _cpu(parts_all)
    return {
        "put_cpu_ms": put_cpu / puts * 1000,
        "part_cpu_ms_per_mib": part_cpu / (parts * PART / common.MIB) * 1000,
    }


async def _both(server: S3Server, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import s3fs

    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **server.storage_options())
    await fs.set_session()
    lean = s3_client.S3Client.from_botocore(fs.s3)
    assert lean is not None
    results: dict[str, dict[str, float]] = {}
    try:
        for name, api in (("trialsync lean", lean), ("botocore (s3fs)", s3_upload.BotocoreApi(fs))):
            results[name] = await _measure(api, server.make_bucket(), args.puts, args.parts)
            print(f"  {name}: {results[name]}", flush=True)
    finally:
        await lean.close()
        await fs._s3.close()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    with common.scratch("requests") as work, common.seaweedfs(work / "seaweedfs") as server:
        os.environ.update(server.env())
        clients = asyncio.run(_both(server, args))
    return {"puts": args.puts, "parts": args.parts, "clients": clients}


def report(results: dict[str, Any]) -> str:
    rows = [
        [name, r["put_cpu_ms"], r["part_cpu_ms_per_mib"]] for name, r in results["clients"].items()
    ]
    return "\n".join(
        [
            f"Client CPU per request ({results['puts']} x 4 KiB PUT, "
            f"{results['parts']} x 16 MiB part)",
            common.table(["client", "CPU ms / PUT", "CPU ms / MiB of parts"], rows),
        ]
    )


def main() -> None:
    common.run_alone("requests", __doc__, run, report, add_arguments)


if __name__ == "__main__":
    main()
