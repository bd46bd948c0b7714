"""The remote side: an fsspec filesystem rooted at the upload dir, used asynchronously.

Async backends (s3fs, gcsfs) are driven on the caller's event loop so a sync can be
cancelled at its timeout; blocking backends (local files, HDFS) run in worker threads.
Local files are always read in worker threads, exactly as scanned (``local_files``).
HDFS writes, reads and deletes go through ``webhdfs_io`` (``webhdfs://``) or
``hdfs_rpc_io`` (``hdfs://``): a file replaced whole, never seen in part; so do their
listings (every error raised, where fsspec's ``find`` passes over a directory it cannot
list) and lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import posixpath
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import fsspec
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from trialsync import contract
from trialsync._stores import (
    aborts,
    base,
    credentials,
    gcs_upload,
    hdfs_rpc_io,
    hdfs_temp,
    s3_client,
    s3_upload,
    webhdfs_io,
)
from trialsync._stores.base import RemoteObject
from trialsync._util import local_files, small_reads, tasks, throttle
from trialsync._util.throttle import Limiter

log = logging.getLogger(__name__)

CREDENTIAL_CHECK_INTERVAL = 1.0  # seconds
#: How HDFS is written, read and deleted, per scheme (each module has ``put_file``,
#: ``put_bytes``, ``read`` and ``delete``).
_HDFS_IO = dict.fromkeys(webhdfs_io.PROTOCOLS, webhdfs_io) | dict.fromkeys(
    hdfs_rpc_io.PROTOCOLS, hdfs_rpc_io
)
DELETES_IN_FLIGHT = 16
COPY_CHUNK = 2**20


@dataclasses.dataclass(eq=False)
class _Clients:
    """One generation of clients, built with one set of credentials.

    ``users`` counts the operations running on it: a generation retired by a credential
    change is closed when the last of them ends.
    """

    fs: Any
    s3: s3_upload.S3Api | None
    root: str  # the upload dir's path in ``fs``
    bucket: str  # S3: the upload dir's bucket and key prefix
    prefix: str
    fingerprint: str
    users: int = 0
    retired: bool = False


class RemoteStore:
    """Files under ``upload_dir``, addressed by root-relative POSIX paths."""

    verifiable = True

    def __init__(
        self,
        upload_dir: str,
        storage_options: Mapping[str, Any] | None = None,
        part_size: int = contract.PART_SIZE.default,
        part_concurrency: int = base.PART_CONCURRENCY,
        credential_files: tuple[str, ...] = (),
        s3_botocore: bool = False,
        credentials_dir: str | None = None,
        on_request: base.RequestCounter = base.ignore_request,
        limiter: Limiter = throttle.UNLIMITED,
    ) -> None:
        self.upload_dir = upload_dir.rstrip("/")
        protocol, _ = split_protocol(self.upload_dir)
        self.protocol = (protocol or "file").lower()
        self._options = dict(storage_options or {})
        self._part_size = part_size
        self._part_concurrency = part_concurrency
        # S3's requests are counted by the client that sends them (each attempt), GCS
        # uploads by gcs_upload; the other calls of an fsspec backend here, one each.
        self._count = on_request
        # ``bandwidth_limit``: the lean S3 client takes each slice of a body as it sends
        # it; the other clients, a whole file (or part) before they send it.
        self._limiter = limiter
        self._credential_files = credential_files
        # A mounted credentials Secret, read into the environment (None: the environment
        # alone, as outside Kubernetes).
        self._secret = credentials.MountedSecret(credentials_dir) if credentials_dir else None
        self._current: _Clients | None = None
        # The lean client unless asked for botocore or the options need it.
        self._lean_s3 = not s3_botocore and s3_client.supports(self._options)
        self._checked_at = float("-inf")
        self._rebuild = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()  # retired generations being closed
        self.is_async = bool(
            getattr(fsspec.get_filesystem_class(self.protocol), "async_impl", False)
        )
        self._hdfs = _HDFS_IO.get(self.protocol)

    @contextlib.asynccontextmanager
    async def _clients(self) -> AsyncIterator[_Clients]:
        """The current clients, held for one operation (see ``_Clients.users``)."""
        clients = await self._fresh()
        clients.users += 1
        try:
            yield clients
        except PermissionError as exc:
            if not isinstance(exc, base.ObjectRefused):
                # Refused credentials: the next operation reads them again at once (a
                # rotated Secret may be there already), not a second later.
                self._checked_at = float("-inf")
            raise
        finally:
            clients.users -= 1
            if clients.retired and clients.users == 0:
                self._close_later(clients)

    async def _fresh(self) -> _Clients:
        """The clients, rebuilt when the credentials they were built with changed.

        They are checked at most once a second (this runs for every upload), and at once
        after the store refused them.
        """
        loop = asyncio.get_running_loop()
        current = self._current
        if (
            current is not None
            and loop.time() - self._checked_at < CREDENTIAL_CHECK_INTERVAL
            and not self._rebuild.locked()  # a rebuild's callers wait for the new clients
        ):
            return current
        async with self._rebuild:
            current = self._current
            if current is not None and loop.time() - self._checked_at < CREDENTIAL_CHECK_INTERVAL:
                return current  # checked (and rebuilt, if it had to be) while we waited
            self._checked_at = loop.time()
            # Reads the mount and stats credential files: off the event loop, which must
            # keep serving /healthz.
            fingerprint = await asyncio.to_thread(self._credentials_now)
            if current is not None and fingerprint == current.fingerprint:
                return current
            built = await self._build(fingerprint)
            if current is not None:
                log.info("credentials changed; rebuilding the %s client", self.protocol)
                current.retired = True
                if current.users == 0:
                    self._close_later(current)
            self._current = built
            return built

    def _credentials_now(self) -> str:
        """Blocking: a new version of the mounted Secret put in the environment; the
        fingerprint of the credentials as they are now."""
        mount = None
        if self._secret is not None:
            changed = self._secret.refresh()
            if changed:
                log.info(
                    "credentials read from %s: %s",
                    self._secret.directory,
                    ", ".join(changed),
                )
            mount = self._secret.identity
        return credentials.fingerprint(self._credential_files, mount)

    async def _build(self, fingerprint: str) -> _Clients:
        options = dict(self._options)
        options["skip_instance_cache"] = True
        if self.is_async:
            options["asynchronous"] = True
            options["loop"] = asyncio.get_running_loop()
        if self._hdfs is hdfs_rpc_io:
            fs, root = hdfs_rpc_io.filesystem(self.upload_dir, self._options)
        else:
            fs, root = fsspec.core.url_to_fs(self.upload_dir, **options)
        if self.is_async and hasattr(fs, "set_session"):
            await fs.set_session()
        s3: s3_upload.S3Api | None = None
        bucket = prefix = ""
        if self.protocol in ("s3", "s3a"):
            _count_botocore_requests(fs.s3, self._count)
            lean = s3_client.S3Client.from_botocore(fs.s3) if self._lean_s3 else None
            if lean is not None:
                lean.on_request = self._count
                lean.throttle = self._limiter
            s3 = lean or s3_upload.BotocoreApi(fs)
            # Parsed once here, not for every upload.
            bucket, prefix, _ = fs.split_path(root.rstrip("/"))
        return _Clients(fs, s3, root.rstrip("/"), bucket, prefix, fingerprint)

    def _close_later(self, clients: _Clients) -> None:
        task = asyncio.get_running_loop().create_task(self._close_clients(clients))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_clients(self, clients: _Clients) -> None:
        # Aborts of its cancelled multipart uploads still need the client (parts are billed).
        await aborts.wait(aborts.GRACE)
        if isinstance(clients.s3, s3_client.S3Client):
            await clients.s3.close()
        # BotocoreApi uses the filesystem's client, closed with it.
        if self.is_async:
            await _close_client(clients.fs, self.protocol)

    async def connect(self) -> None:
        """Build the clients and make one cheap authenticated request, so readiness means
        the store answers with these credentials (a missing bucket or a refused key fails
        here, named, instead of at the first checkpoint)."""
        # Building the s3fs/gcsfs client (botocore's endpoint data, Google's auth) took
        # 0.16 s here: spend it at start-up rather than on the first checkpoint.
        async with self._clients() as c:
            await self._probe(c)

    async def _probe(self, c: _Clients) -> None:
        if c.s3 is not None:
            # One page of at most one key under the upload dir; NoSuchBucket and an
            # AccessDenied raise (an empty prefix is fine).
            prefix = f"{c.prefix}/" if c.prefix else ""
            listing = (
                c.s3.list_objects(c.bucket, prefix, page_size=1)
                if isinstance(c.s3, s3_client.S3Client)
                else c.s3.list_objects(c.bucket, prefix)
            )
            try:
                async for _ in listing:
                    break
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"{self.upload_dir}: the bucket does not exist ({exc})"
                ) from exc
            return
        self._count("list")
        if not self.is_async:
            check = _check_writable_dir
            if self._hdfs is hdfs_rpc_io:
                check = hdfs_rpc_io.one_line_errors(check)
            await asyncio.to_thread(check, c.fs, c.root, self.upload_dir)
            return
        with contextlib.suppress(FileNotFoundError):  # nothing uploaded there yet
            await c.fs._ls(c.root)

    @staticmethod
    def _key(clients: _Clients, rel: str) -> str:
        """The S3 key of ``rel`` in ``clients.bucket``."""
        return posixpath.join(clients.prefix, rel) if rel else clients.prefix

    @staticmethod
    def _path(clients: _Clients, rel: str) -> str:
        return posixpath.join(clients.root, rel) if rel else clients.root

    def url(self, rel: str) -> str:
        return f"{self.upload_dir}/{rel}" if rel else self.upload_dir

    async def put_file(self, local_path: str, rel: str, size: int) -> None:
        async with self._clients() as c:
            if not isinstance(c.s3, s3_client.S3Client):
                await self._limiter.take(size)
            if c.s3 is not None:
                await s3_upload.put_file(
                    c.s3,
                    local_path,
                    c.bucket,
                    self._key(c, rel),
                    size,
                    self._part_size,
                    self._part_concurrency,
                )
            elif self.protocol in ("gs", "gcs"):
                await gcs_upload.put_file(
                    c.fs, local_path, self._path(c, rel), size, self._part_size, self._count
                )
            elif self._hdfs is not None:
                await asyncio.to_thread(
                    self._hdfs.put_file, c.fs, local_path, self._path(c, rel), size, self._count
                )
            elif not self.is_async:
                self._count("put")
                # A blocking backend runs in a thread that a timeout cannot stop; the retry
                # rewrites the same content, so an abandoned copy does no harm.
                await asyncio.to_thread(_copy_blocking, c.fs, local_path, self._path(c, rel), size)
            elif size < 2 * self._part_size:
                self._count("put")
                data = await small_reads.read_exact(local_path, size)
                await c.fs._pipe_file(self._path(c, rel), data)
            else:
                # Another async backend: its own streaming upload (which reads the file's
                # current size, not the scanned one; the re-check before a manifest
                # catches a file that changed).
                self._count("put")
                await c.fs._put_file(local_path, self._path(c, rel))

    async def put_bytes(self, rel: str, data: bytes) -> None:
        async with self._clients() as c:
            if c.s3 is not None:
                await c.s3.put_object(c.bucket, self._key(c, rel), data)
                return
            if self._hdfs is not None:
                await asyncio.to_thread(
                    self._hdfs.put_bytes, c.fs, self._path(c, rel), data, self._count
                )
                return
            self._count("put")
            if self.is_async:
                await c.fs._pipe_file(self._path(c, rel), data)
            else:
                await asyncio.to_thread(_pipe_blocking, c.fs, self._path(c, rel), data)

    async def read_bytes(self, rel: str) -> bytes:
        async with self._clients() as c:
            if c.s3 is not None:
                return await c.s3.get_object(c.bucket, self._key(c, rel))
            self._count("get")
            if self._hdfs is not None:
                return await asyncio.to_thread(self._hdfs.read, c.fs, self._path(c, rel))
            if self.is_async:
                data: bytes = await c.fs._cat_file(self._path(c, rel))
                return data
            data = await asyncio.to_thread(c.fs.cat_file, self._path(c, rel))
            return data

    async def read_range(self, rel: str, start: int, end: int) -> bytes:
        async with self._clients() as c:
            if c.s3 is not None:
                return await c.s3.get_range(c.bucket, self._key(c, rel), start, end)
            self._count("get")
            if self._hdfs is not None:
                return await asyncio.to_thread(
                    self._hdfs.read, c.fs, self._path(c, rel), start, end
                )
            if self.is_async:
                data: bytes = await c.fs._cat_file(self._path(c, rel), start=start, end=end)
                return data
            data = await asyncio.to_thread(c.fs.cat_file, self._path(c, rel), start, end)
            return data

    async def read_range_into(self, rel: str, start: int, end: int, fd: int) -> int:
        """``WritesRanges``: on S3 through the lean client, each chunk written as it
        arrives (by a worker thread, ``http1.FilePool``); else read whole, then written."""
        async with self._clients() as c:
            if isinstance(c.s3, s3_client.S3Client):
                return await c.s3.get_range_into(c.bucket, self._key(c, rel), start, end, fd)
        data = await self.read_range(rel, start, end)
        await asyncio.to_thread(local_files.write_at, fd, data, start)
        return len(data)

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        """Every object below ``rel_prefix``, keyed by root-relative path; {} if none."""
        async with self._clients() as c:
            if c.s3 is not None:
                return await self._list_s3(c, c.s3, self._key(c, rel_prefix))
            fs = c.fs
            base = self._path(c, rel_prefix)
            self._count("list")
            try:
                if self.is_async:
                    fs.invalidate_cache(base)
                    found = await fs._find(base, detail=True, withdirs=False)
                elif self._hdfs is not None:
                    found = await asyncio.to_thread(self._hdfs.find, fs, base)
                else:
                    found = await asyncio.to_thread(fs.find, base, detail=True, withdirs=False)
            except FileNotFoundError:
                return {}
            strip = len(c.root) + 1 if c.root else 0
            listing: dict[str, RemoteObject] = {}
            stale: list[str] = []
            for name, info in found.items():
                if info.get("type", "file") != "file":
                    continue
                if self._hdfs is not None and hdfs_temp.is_temporary(name):
                    # Being written, or left by a writer that died: never listed.
                    if hdfs_temp.is_stale(_remote_object(info).mtime):
                        stale.append(name)
                    continue
                rel = fs._strip_protocol(name)[strip:]
                listing[rel] = _remote_object(info)
            if stale:
                await asyncio.to_thread(self._remove_stale, fs, stale)
            return listing

    def _remove_stale(self, fs: Any, paths: Sequence[str]) -> None:
        """Delete HDFS temporary files whose writers are long gone (best effort: a failure
        is logged, and the next listing tries again)."""
        assert self._hdfs is not None
        for path in paths:
            self._count("delete")
            try:
                self._hdfs.delete(fs, fs._strip_protocol(path))
            except OSError as exc:
                log.warning("could not delete %s, left by a writer that died: %s", path, exc)
            else:
                log.info("deleted %s, left by a writer that died", path)

    async def stat(self, rel: str) -> RemoteObject | None:
        """The object at ``rel``: on S3 one listing of at most one key; None if there is
        none, or if ``rel`` is a directory."""
        async with self._clients() as c:
            if c.s3 is not None:
                key = self._key(c, rel)
                listing = (
                    c.s3.list_objects(c.bucket, key, page_size=1)
                    if isinstance(c.s3, s3_client.S3Client)
                    else c.s3.list_objects(c.bucket, key)
                )
                async for item in listing:  # the key itself sorts before all it prefixes
                    if item.key == key:
                        return RemoteObject(item.size, item.mtime, item.etag)
                    return None
                return None
            path = self._path(c, rel)
            self._count("head")
            try:
                if self.is_async:
                    c.fs.invalidate_cache(path)
                    info = await c.fs._info(path)
                elif self._hdfs is not None:
                    info = await asyncio.to_thread(self._hdfs.info, c.fs, path)
                else:
                    info = await asyncio.to_thread(c.fs.info, path)
            except FileNotFoundError:
                return None
            return _remote_object(info) if info.get("type", "file") == "file" else None

    @staticmethod
    async def _list_s3(c: _Clients, api: s3_upload.S3Api, key: str) -> dict[str, RemoteObject]:
        strip = len(c.prefix) + 1 if c.prefix else 0  # keys relative to the root
        listing: dict[str, RemoteObject] = {}
        try:
            async for item in api.list_objects(c.bucket, f"{key}/" if key else ""):
                listing[item.key[strip:]] = RemoteObject(item.size, item.mtime, item.etag)
        except FileNotFoundError:
            return {}
        return listing

    async def delete(self, rels: Iterable[str]) -> None:
        """Delete each of ``rels``; one already gone (a lifecycle rule, another client) is
        not an error on any backend."""
        rels = list(rels)
        if not rels:
            return
        async with self._clients() as c:
            if c.s3 is not None:
                api = c.s3

                async def one_s3(rel: str) -> None:
                    await api.delete_object(c.bucket, self._key(c, rel))

                # One DELETE per object: a checkpoint's files or one manifest, so no batch
                # API (and its Content-MD5) is worth it.
                await tasks.bounded(DELETES_IN_FLIGHT, rels, one_s3)
                return
            paths = [self._path(c, rel) for rel in rels]
            try:
                await self._rm(c.fs, paths)
            except FileNotFoundError:
                # A batch stops at a missing path: delete one by one, skipping the missing.
                async def one(path: str) -> None:
                    with contextlib.suppress(FileNotFoundError):
                        await self._rm(c.fs, [path])

                await tasks.bounded(DELETES_IN_FLIGHT, paths, one)

    async def _rm(self, fs: Any, paths: Sequence[str]) -> None:
        hdfs = self._hdfs
        if hdfs is not None:
            # HDFS deletes one path a request (fsspec's ``rm`` takes only one).
            async def one(path: str) -> None:
                self._count("delete")
                await asyncio.to_thread(hdfs.delete, fs, path)

            await tasks.bounded(DELETES_IN_FLIGHT, paths, one)
            return
        self._count("delete")
        if self.is_async:
            await fs._rm(list(paths))
        else:
            await asyncio.to_thread(fs.rm, list(paths))

    async def close(self) -> None:
        """Wait for scheduled aborts (at most ``aborts.GRACE``, once: closing each
        generation of clients waits for them), then close every client. The caller bounds
        the whole with its own deadline at SIGTERM."""
        current, self._current = self._current, None
        if current is not None:
            await self._close_clients(current)
        if self._closing:
            await asyncio.wait(set(self._closing))


#: botocore's operations, as ``trialsync_store_requests_total`` names them.
_BOTOCORE_OPERATIONS = {
    "PutObject": "put",
    "UploadPart": "put_part",
    "CreateMultipartUpload": "multipart_start",
    "CompleteMultipartUpload": "multipart_complete",
    "AbortMultipartUpload": "multipart_abort",
    "GetObject": "get",
    "HeadObject": "head",
    "HeadBucket": "head",
    "ListObjectsV2": "list",
    "ListObjects": "list",
    "DeleteObject": "delete",
    "DeleteObjects": "delete",
}


def _count_botocore_requests(client: Any, count: base.RequestCounter) -> None:
    """Count every request the (aio)botocore ``client`` of s3fs sends, retries included."""

    def sending(event_name: str = "", **_: Any) -> None:  # None: the request goes ahead
        count(_BOTOCORE_OPERATIONS.get(event_name.rpartition(".")[2], "other"))

    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        events.register("before-send.s3", sending)


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


def _copy_blocking(fs: Any, local_path: str, target: str, size: int) -> None:
    """Copy the first ``size`` bytes of ``local_path`` to ``target``, a chunk at a time."""
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    with local_files.reading(local_path) as fd, fs.open(target, "wb") as out:
        for chunk in local_files.chunks(fd, size, local_path, COPY_CHUNK):
            out.write(chunk)


def _pipe_blocking(fs: Any, target: str, data: bytes) -> None:
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    fs.pipe_file(target, data)


def _check_writable_dir(fs: Any, root: str, url: str) -> None:
    """A local-like store: the upload dir, or the nearest existing parent, is a directory
    this process may write to (for file://, a mounted volume)."""
    path = root
    while not fs.exists(path):
        parent = posixpath.dirname(path.rstrip("/"))
        if parent == path:
            break
        path = parent
    if not fs.isdir(path):
        raise NotADirectoryError(f"{url}: {path} is not a directory")
    if isinstance(fs, LocalFileSystem) and not os.access(path, os.W_OK):
        raise PermissionError(f"{url}: {path} is not writable by this process")


def _remote_object(info: Mapping[str, Any]) -> RemoteObject:
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated")
    for millis in ("modificationTime", "modification_time"):  # WebHDFS, hdfs-native
        if mtime is None and millis in info:
            mtime = info[millis] / 1000
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
