"""The remote side: an fsspec filesystem rooted at the upload dir, used asynchronously.

Async backends (s3fs, gcsfs) are driven on the caller's event loop so a sync can be
cancelled at its timeout; blocking backends (local files, HDFS) run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import fsspec
from fsspec.core import split_protocol

from trialsync import credentials, s3_client, s3_upload, tasks
from trialsync.ledger import RemoteObject

log = logging.getLogger(__name__)

# Multipart part size and parts in flight per file: bounds the sidecar's memory to about
# part_size * part_concurrency for each large file in flight.
DEFAULT_PART_SIZE = 16 * 2**20
DEFAULT_PART_CONCURRENCY = 4
CREDENTIAL_CHECK_INTERVAL = 1.0  # seconds
ABORT_GRACE = 10.0  # seconds close() waits for pending multipart aborts
DELETES_IN_FLIGHT = 16


class Store(Protocol):
    """What the engine needs of the remote side. ``verifiable``: ``list`` reports sizes."""

    verifiable: bool

    def url(self, rel: str) -> str: ...

    async def connect(self) -> None:
        """Build clients now, so the first upload does not pay for it."""

    async def put_file(self, local_path: str, rel: str) -> None: ...

    async def put_bytes(self, rel: str, data: bytes) -> None: ...

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]: ...

    async def delete(self, rels: Iterable[str]) -> None: ...

    async def close(self) -> None: ...


class RemoteStore:
    """Files under ``upload_dir``, addressed by root-relative POSIX paths."""

    verifiable = True

    def __init__(
        self,
        upload_dir: str,
        storage_options: Mapping[str, Any] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        part_concurrency: int = DEFAULT_PART_CONCURRENCY,
        credential_files: tuple[str, ...] = (),
        s3_botocore: bool = False,
    ) -> None:
        self.upload_dir = upload_dir.rstrip("/")
        protocol, _ = split_protocol(self.upload_dir)
        self.protocol = (protocol or "file").lower()
        self._options = dict(storage_options or {})
        self._part_size = part_size
        self._part_concurrency = part_concurrency
        self._credential_files = credential_files
        self._fs: Any = None
        self._s3: s3_upload.S3Api | None = None
        self._bucket = self._prefix = ""  # S3: the upload dir's bucket and key prefix
        # The lean client unless asked for botocore or the options need it.
        self._lean_s3 = not s3_botocore and s3_client.supports(self._options)
        self._root = ""
        self._fingerprint = ""
        self._checked_at = float("-inf")
        self._rebuild = asyncio.Lock()
        # Clients replaced after a credential change; closed with the store, since uploads
        # that started on them may still be running.
        self._retired: list[Any] = []
        self.is_async = bool(
            getattr(fsspec.get_filesystem_class(self.protocol), "async_impl", False)
        )

    async def _filesystem(self) -> Any:
        """The filesystem, rebuilt when the credentials it was built with changed.

        They are checked at most once a second: this runs for every upload.
        """
        now = asyncio.get_running_loop().time()
        if self._fs is not None and now - self._checked_at < CREDENTIAL_CHECK_INTERVAL:
            return self._fs
        self._checked_at = now
        current = credentials.fingerprint(self._credential_files)
        if self._fs is not None and current == self._fingerprint:
            return self._fs
        async with self._rebuild:
            if self._fs is not None and current == self._fingerprint:
                return self._fs
            if self._fs is not None:
                log.info("credentials changed; rebuilding the %s client", self.protocol)
                self._retired.extend([self._s3, self._fs])
            return await self._build(current)

    async def _build(self, fingerprint: str) -> Any:
        options = dict(self._options)
        options["skip_instance_cache"] = True
        if self.is_async:
            options["asynchronous"] = True
            options["loop"] = asyncio.get_running_loop()
        fs, root = fsspec.core.url_to_fs(self.upload_dir, **options)
        if self.is_async and hasattr(fs, "set_session"):
            await fs.set_session()
        if self.protocol in ("s3", "s3a"):
            lean = s3_client.S3Client.from_botocore(fs.s3) if self._lean_s3 else None
            self._s3 = lean or s3_upload.BotocoreApi(fs)
            # Parsed once here, not for every upload.
            self._bucket, self._prefix, _ = fs.split_path(root.rstrip("/"))
        self._fs, self._root, self._fingerprint = fs, root.rstrip("/"), fingerprint
        return fs

    async def connect(self) -> None:
        # Building the s3fs/gcsfs client (botocore's endpoint data, Google's auth) took
        # 0.16 s here: spend it at start-up rather than on the first checkpoint.
        await self._filesystem()

    def _key(self, rel: str) -> str:
        """The S3 key of ``rel`` in ``self._bucket``."""
        return posixpath.join(self._prefix, rel) if rel else self._prefix

    def path(self, rel: str) -> str:
        return posixpath.join(self._root, rel) if rel else self._root

    def url(self, rel: str) -> str:
        return f"{self.upload_dir}/{rel}" if rel else self.upload_dir

    async def put_file(self, local_path: str, rel: str) -> None:
        fs = await self._filesystem()
        if self._s3 is not None:
            size = os.path.getsize(local_path)  # noqa: ASYNC240 - one stat
            await s3_upload.put_file(
                self._s3,
                local_path,
                self._bucket,
                self._key(rel),
                size,
                self._part_size,
                self._part_concurrency,
            )
            return
        target = self.path(rel)
        if not self.is_async:
            # A blocking backend runs in a thread that a timeout cannot stop; the retry
            # rewrites the same content, so an abandoned copy does no harm.
            await asyncio.to_thread(_put_blocking, fs, local_path, target)
            return
        chunks = {"chunksize": self._part_size} if self.protocol in ("gs", "gcs") else {}
        await fs._put_file(local_path, target, **chunks)

    async def put_bytes(self, rel: str, data: bytes) -> None:
        fs = await self._filesystem()
        target = self.path(rel)
        if self.is_async:
            await fs._pipe_file(target, data)
        else:
            await asyncio.to_thread(_pipe_blocking, fs, target, data)

    async def get_file(self, rel: str, local_path: str) -> None:
        """Download ``rel`` to ``local_path``: streamed to a temp file, then renamed."""
        fs = await self._filesystem()
        temp = f"{local_path}.trialsync-tmp"
        try:
            if self.is_async:
                await fs._get_file(self.path(rel), temp)
            else:
                await asyncio.to_thread(fs.get_file, self.path(rel), temp)
            os.replace(temp, local_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        """Every object below ``rel_prefix``, keyed by root-relative path; {} if none."""
        fs = await self._filesystem()
        if self._s3 is not None:
            return await self._list_s3(self._s3, self._key(rel_prefix))
        base = self.path(rel_prefix)
        try:
            if self.is_async:
                fs.invalidate_cache(base)
                found = await fs._find(base, detail=True, withdirs=False)
            else:
                found = await asyncio.to_thread(fs.find, base, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        strip = len(self._root) + 1 if self._root else 0
        listing: dict[str, RemoteObject] = {}
        for name, info in found.items():
            if info.get("type", "file") != "file":
                continue
            rel = fs._strip_protocol(name)[strip:]
            listing[rel] = _remote_object(info)
        return listing

    async def _list_s3(self, api: s3_upload.S3Api, key: str) -> dict[str, RemoteObject]:
        strip = len(self._prefix) + 1 if self._prefix else 0  # keys relative to the root
        listing: dict[str, RemoteObject] = {}
        try:
            async for item in api.list_objects(self._bucket, f"{key}/" if key else ""):
                listing[item.key[strip:]] = RemoteObject(item.size, item.mtime, item.etag)
        except FileNotFoundError:
            return {}
        return listing

    async def delete(self, rels: Iterable[str]) -> None:
        fs = await self._filesystem()
        rels = list(rels)
        if not rels:
            return
        if self._s3 is not None:
            await _delete_s3(self._s3, [(self._bucket, self._key(rel)) for rel in rels])
            return
        paths = [self.path(rel) for rel in rels]
        if self.is_async:
            await fs._rm(paths)
        else:
            await asyncio.to_thread(fs.rm, paths)

    async def close(self) -> None:
        # Multipart aborts of cancelled uploads still need the clients (parts are billed).
        await s3_upload.wait_for_aborts(ABORT_GRACE)
        clients = [*self._retired, self._s3, self._fs]
        self._fs, self._s3, self._retired = None, None, []
        for client in clients:
            if isinstance(client, s3_client.S3Client):
                await client.close()
            elif isinstance(client, s3_upload.BotocoreApi) or client is None:
                continue  # BotocoreApi uses the filesystem's client, closed with it
            elif self.is_async:
                await _close_client(client, self.protocol)


async def _delete_s3(api: s3_upload.S3Api, targets: list[tuple[str, str]]) -> None:
    """One DELETE per object, ``DELETES_IN_FLIGHT`` at a time: a checkpoint's files or one
    manifest, so no batch API (and its Content-MD5) is worth it."""
    gate = asyncio.Semaphore(DELETES_IN_FLIGHT)

    async def one(bucket: str, key: str) -> None:
        async with gate:
            await api.delete_object(bucket, key)

    await tasks.run_all([one(bucket, key) for bucket, key in targets])


async def _close_client(fs: Any, protocol: str) -> None:
    session = getattr(fs, "_s3", None) or getattr(fs, "_session", None)
    closer = getattr(session, "close", None)
    if closer is None:
        return
    try:
        result = closer()
        if asyncio.iscoroutine(result):
            await result
    except Exception as exc:  # closing is best effort; the process may be ending
        log.debug("closing the %s client failed: %s", protocol, exc)


def _put_blocking(fs: Any, local_path: str, target: str) -> None:
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    fs.put_file(local_path, target)


def _pipe_blocking(fs: Any, target: str, data: bytes) -> None:
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    fs.pipe_file(target, data)


def _remote_object(info: Mapping[str, Any]) -> RemoteObject:
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if isinstance(mtime, datetime.datetime):
        stamp: float | None = mtime.timestamp()
    elif isinstance(mtime, int | float):
        stamp = float(mtime)
    else:
        stamp = None
    checksum = info.get("ETag") or info.get("md5Hash") or info.get("crc32c")
    return RemoteObject(
        size=int(info.get("size", 0)),
        mtime=stamp,
        checksum=str(checksum).strip('"') if checksum else None,
    )
