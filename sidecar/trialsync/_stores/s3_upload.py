"""S3 uploads with a sliding window of parts, reading files off the event loop.

s3fs reads a batch of parts on the event loop and waits for the whole batch before it
reads the next, so one slow part stalls the rest; and it aborts a multipart upload on
errors but not on cancellation. Here every read (a small file whole, or one part) runs in
a worker thread when a slot in the window frees up, any failure or cancellation aborts the
upload, and memory is bounded by ``part_size * window``. Exactly the scanned ``size`` is
read and sent, however the file changed since. The requests go through an ``S3Api``: the
lean ``trialsync._stores.s3_client.S3Client``, or ``BotocoreApi`` over s3fs where storage options
need botocore.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from trialsync._stores import aborts
from trialsync._stores.base import part_size_for
from trialsync._stores.s3_client import Listed
from trialsync._util import local_files, small_reads, tasks


class S3Api(Protocol):
    async def put_object(self, bucket: str, key: str, body: bytes) -> str: ...

    async def create_multipart_upload(self, bucket: str, key: str) -> str: ...

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: bytes
    ) -> str: ...

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, etags: Mapping[int, str]
    ) -> None: ...

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def delete_object(self, bucket: str, key: str) -> None: ...

    async def get_object(self, bucket: str, key: str) -> bytes: ...

    async def get_range(self, bucket: str, key: str, start: int, end: int) -> bytes: ...

    def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[Listed]: ...


class BotocoreApi:
    """``S3Api`` through an s3fs filesystem's botocore client."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    async def put_object(self, bucket: str, key: str, body: bytes) -> str:
        out = await self._fs._call_s3("put_object", Bucket=bucket, Key=key, Body=body)
        return str(out.get("ETag", ""))

    async def create_multipart_upload(self, bucket: str, key: str) -> str:
        out = await self._fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        return str(out["UploadId"])

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: bytes
    ) -> str:
        out = await self._fs._call_s3(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return str(out["ETag"])

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, etags: Mapping[int, str]
    ) -> None:
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(etags.items())]
        await self._fs._call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._fs._call_s3(
            "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id
        )

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._fs._call_s3("delete_object", Bucket=bucket, Key=key)

    async def get_object(self, bucket: str, key: str) -> bytes:
        data: bytes = await self._fs._cat_file(f"{bucket}/{key}")
        return data

    async def get_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        data: bytes = await self._fs._cat_file(f"{bucket}/{key}", start=start, end=end)
        return data

    async def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[Listed]:
        # s3fs's find would also fill its directory cache with every entry, which costs
        # seconds and memory at 100,000 objects: page through the listing directly.
        async for info in self._fs._iterdir(bucket, delimiter="", prefix=prefix):
            if info.get("type") != "file":
                continue
            modified = info.get("LastModified")
            etag = info.get("ETag")
            yield Listed(
                key=info["name"].partition("/")[2],  # "bucket/key"
                size=int(info.get("size", 0)),
                mtime=modified.timestamp() if modified is not None else None,
                etag=str(etag).strip('"') if etag else None,
            )


async def put_file(
    api: S3Api,
    local_path: str,
    bucket: str,
    key: str,
    size: int,
    part_size: int,
    window: int,
) -> None:
    """Upload the first ``size`` bytes of ``local_path`` (its scanned size) to ``key``.

    A file smaller than two parts goes up in one PutObject; a larger one in parts, at most
    ``window`` of them read and in flight at once. Local read errors are raised as
    ``local_files.LocalReadError``.
    """
    part_size = part_size_for(size, part_size)
    if size < 2 * part_size:
        data = await small_reads.read_exact(local_path, size)
        await api.put_object(bucket, key, data)
        return
    creating = asyncio.ensure_future(api.create_multipart_upload(bucket, key))
    try:
        upload_id = await asyncio.shield(creating)
    except asyncio.CancelledError:
        # The store may create the upload after all: abort it once its id is known.
        creating.add_done_callback(lambda done: _abort_created(api, bucket, key, done))
        raise
    try:
        etags = await _upload_parts(
            api, bucket, key, upload_id, local_path, size, part_size, window
        )
        await api.complete_multipart_upload(bucket, key, upload_id, etags)
    except BaseException:
        # Also on cancellation (a sync past its timeout): parts left behind are billed.
        _schedule_abort(api, bucket, key, upload_id)
        raise


async def _upload_parts(
    api: S3Api,
    bucket: str,
    key: str,
    upload_id: str,
    local_path: str,
    size: int,
    part_size: int,
    window: int,
) -> dict[int, str]:
    etags: dict[int, str] = {}
    fd = await asyncio.to_thread(local_files.open_for_reading, local_path)
    try:

        async def part(numbered: tuple[int, int]) -> None:
            # Read when a worker is free: at most `window` parts in memory.
            number, offset = numbered
            length = min(part_size, size - offset)
            data = await asyncio.to_thread(local_files.pread_exact, fd, length, offset, local_path)
            etags[number] = await api.upload_part(bucket, key, upload_id, number, data)

        parts = list(enumerate(range(0, size, part_size), start=1))
        await tasks.bounded(window, parts, part)
    finally:
        # A read cancelled with the upload may still run in its thread; whatever it reads
        # after this close is discarded with the cancelled upload.
        os.close(fd)
    return etags


def _schedule_abort(api: S3Api, bucket: str, key: str, upload_id: str) -> None:
    aborts.schedule(
        lambda: api.abort_multipart_upload(bucket, key, upload_id),
        f"s3://{bucket}/{key} (multipart upload {upload_id})",
    )


def _abort_created(api: S3Api, bucket: str, key: str, creating: asyncio.Future[str]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        _schedule_abort(api, bucket, key, creating.result())
