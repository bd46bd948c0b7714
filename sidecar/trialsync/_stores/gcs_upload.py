"""GCS uploads that read the local file off the event loop, exactly as scanned.

gcsfs's ``_put_file`` reads each chunk (up to the chunk size, 16 MiB here) with a blocking
``read()`` on the event loop, which stalls ``/healthz`` and every other transfer; it reads
the file's current size rather than the scanned one; and it abandons a resumable upload on
cancellation. Here gcsfs's own request functions (``simple_upload``, ``initiate_upload``,
``upload_chunk``) send what worker threads read, a cancelled resumable upload is deleted
like a failed one, and one chunk at a time is held in memory.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from typing import Any

from trialsync._stores import aborts
from trialsync._stores.base import RequestCounter, ignore_request
from trialsync._util import local_files, small_reads

# GCS: every chunk of a resumable upload but the last must be a multiple of 256 KiB.
CHUNK_GRAIN = 256 * 2**10
# gcsfs sends files below this in one request, too.
SIMPLE_UPLOAD_MAX = 5 * 2**20


def chunk_size_for(part_size: int) -> int:
    return max(CHUNK_GRAIN, part_size - part_size % CHUNK_GRAIN)


async def put_file(
    fs: Any,
    local_path: str,
    rpath: str,
    size: int,
    part_size: int,
    count: RequestCounter = ignore_request,
) -> None:
    """Upload the first ``size`` bytes of ``local_path`` to ``rpath`` on gcsfs ``fs``;
    ``count`` is told of each request."""
    from gcsfs import core  # the gcs extra; trialsync imports without it

    bucket, key, _ = fs.split_path(rpath)
    content_type = mimetypes.guess_type(local_path)[0] or "application/octet-stream"
    if size < SIMPLE_UPLOAD_MAX:
        data = await small_reads.read_exact(local_path, size)
        count("put")
        await core.simple_upload(fs, bucket, key, data, content_type=content_type)
        return
    count("multipart_start")
    location = await core.initiate_upload(fs, bucket, key, content_type)
    chunk = chunk_size_for(part_size)
    try:
        fd = await asyncio.to_thread(local_files.open_for_reading, local_path)
        try:
            for offset in range(0, size, chunk):
                length = min(chunk, size - offset)
                data = await asyncio.to_thread(
                    local_files.pread_exact, fd, length, offset, local_path
                )
                count("put_part")
                await core.upload_chunk(fs, location, data, offset, size, content_type)
        finally:
            os.close(fd)
    except BaseException:
        # As gcsfs does on errors, and also on cancellation: delete the session.
        url = location.replace("&ifGenerationMatch=0", "")

        def abort() -> Any:
            count("multipart_abort")
            return fs._call("DELETE", url)

        aborts.schedule(abort, f"gs://{bucket}/{key}")
        raise
