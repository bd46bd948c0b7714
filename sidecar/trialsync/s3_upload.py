"""S3 uploads with a sliding window of parts, reading files off the event loop.

s3fs reads a batch of parts on the event loop and waits for the whole batch before it
reads the next, so one slow part stalls the rest; and it aborts a multipart upload on
errors but not on cancellation. Here each part is read in a worker thread when a slot in
the window frees up, any failure or cancellation aborts the upload, and memory is bounded
by ``part_size * window``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from trialsync import tasks

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
INLINE_READ = 2**20
_aborts: set[asyncio.Task[None]] = set()


def part_size_for(size: int, part_size: int) -> int:
    """The part size to use: S3 allows 10,000 parts, so a huge file needs larger ones."""
    return max(part_size, -(-size // MAX_PARTS))


async def put_file(
    fs: Any, local_path: str, target: str, size: int, part_size: int, window: int
) -> None:
    """Upload ``local_path`` to ``target`` (``bucket/key``) through the s3fs client ``fs``."""
    bucket, key, _ = fs.split_path(target)
    part_size = part_size_for(size, part_size)
    if size < 2 * part_size:
        # A small read costs less than a hop to a worker thread and back.
        small = size <= INLINE_READ
        data = _read_all(local_path) if small else await asyncio.to_thread(_read_all, local_path)
        await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data)
        return
    upload = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    upload_id = upload["UploadId"]
    try:
        etags = await _upload_parts(fs, bucket, key, upload_id, local_path, size, part_size, window)
        await fs._call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(etags.items())]
            },
        )
    except BaseException:
        # Also on cancellation (a sync past its timeout): parts left behind are billed.
        task = asyncio.get_running_loop().create_task(_abort(fs, bucket, key, upload_id))
        _aborts.add(task)
        task.add_done_callback(_aborts.discard)
        raise


async def _upload_parts(
    fs: Any,
    bucket: str,
    key: str,
    upload_id: str,
    local_path: str,
    size: int,
    part_size: int,
    window: int,
) -> dict[int, str]:
    etags: dict[int, str] = {}
    slots = asyncio.Semaphore(window)
    fd = os.open(local_path, os.O_RDONLY)
    try:

        async def part(number: int, offset: int) -> None:
            async with slots:  # a slot before the read: at most `window` parts in memory
                length = min(part_size, size - offset)
                data = await asyncio.to_thread(os.pread, fd, length, offset)
                if len(data) != length:
                    raise OSError(f"{local_path} shrank while uploading")
                out = await fs._call_s3(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )
                etags[number] = out["ETag"]

        offsets = range(0, size, part_size)
        await tasks.run_all([part(n, offset) for n, offset in enumerate(offsets, start=1)])
    finally:
        os.close(fd)
    return etags


async def _abort(fs: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        log.warning("could not abort the multipart upload of %s/%s: %s", bucket, key, exc)


def _read_all(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
