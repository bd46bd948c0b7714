"""A lean S3 client for the hot path: PutObject, multipart uploads and ListObjectsV2.

botocore spends about 2 ms of CPU on every request (event hooks, serialization, endpoint
rules) and copies each body twice; on a plain-HTTP endpoint it also SHA-256-hashes every
payload. Beside a training pod that is CPU taken from the trainer, and on a small node it
slows the transfer itself. Here a request is signed with SigV4 in a few microseconds,
with ``UNSIGNED-PAYLOAD`` (what botocore sends over HTTPS too). Without a proxy, a small
request (a body up to ``UNWATCHED_BODY``: a first upload of many small files is mostly
such requests) goes over a keep-alive ``http1.Pool`` connection, and a download
(``get_range_into``) is written into its file by a thread (``http1.FilePool``); the rest
(larger bodies, anything through a proxy) with aiohttp.

The client is built from the botocore client that s3fs made, so the endpoint, region and
every credential source botocore knows (environment, profile, web identity, instance
metadata) still apply, refreshed when botocore refreshes them. Storage options it does not
understand (server-side encryption, requester pays, ...) keep the store on s3fs:
``supports()`` says which.

Errors: 404 ``NoSuchBucket``/``NoSuchKey`` raise FileNotFoundError, 403 PermissionError,
anything else ``S3Error`` (an OSError) with the status, S3 code and message. Requests are
retried a few times on throttling, 5xx and connection errors, as botocore retries them.

Timeouts, per attempt: connecting (``connect_timeout``); sending the body, which must make
progress every ``write_timeout`` seconds (aiohttp itself has no bound there: a peer that
stops reading would hold a request until the sync's own timeout); and, once the body is
sent, each read of the answer (``read_timeout``). botocore's socket timeout bounds both
directions the same way.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import inspect
import logging
import ssl
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit

import aiohttp
from yarl import URL

from trialsync._stores import http1
from trialsync._stores.base import RequestCounter, byte_range, ignore_request
from trialsync._util import backoff, local_files, throttle
from trialsync._util.throttle import Limiter

log = logging.getLogger(__name__)

#: Where a download's body goes: ``(fd, offset of its first byte, [bytes written])``, the
#: count set by the attempt that succeeded.
Into = tuple[int, int, list[int]]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
# Attempts per request and the first backoff (doubling, capped, jittered): at most about
# 15 s of waiting, as botocore's legacy retry mode.
ATTEMPTS = 5
RETRY_BASE = 1.0
RETRY_CAP = 20.0
WRITE_CHUNK = 2**20
# With a bandwidth limit, bodies go in smaller slices, so the rate holds within a slice.
THROTTLED_CHUNK = 2**18
# A body up to this size goes to the transport in one write that never waits for the
# peer (aiohttp drains only above 64 KiB), so only larger bodies need the write watchdog.
UNWATCHED_BODY = 2**16
# Storage options the lean client honours; any other keeps the store on s3fs.
SUPPORTED_OPTIONS = {
    "anon",
    "key",
    "secret",
    "token",
    "endpoint_url",
    "client_kwargs",
    "config_kwargs",
    "use_ssl",
    "skip_instance_cache",
    "asynchronous",
    "loop",
}
_SUPPORTED_CLIENT_KWARGS = {"endpoint_url", "region_name", "verify"}
_SUPPORTED_CONFIG_KWARGS = {"connect_timeout", "read_timeout", "region_name", "s3"}


class S3Error(OSError):
    """S3 answered with an error status."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class S3NotFound(S3Error, FileNotFoundError):
    """No such bucket, key or upload."""


class S3Forbidden(S3Error, PermissionError):
    """Access denied, or the credentials are wrong."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    mtime: float | None
    etag: str | None


def supports(options: Mapping[str, Any]) -> bool:
    """Whether storage ``options`` need nothing beyond what this client does."""
    if set(options) - SUPPORTED_OPTIONS:
        return False
    if set(options.get("client_kwargs") or {}) - _SUPPORTED_CLIENT_KWARGS:
        return False
    config = options.get("config_kwargs") or {}
    if set(config) - _SUPPORTED_CONFIG_KWARGS:
        return False
    return not set(config.get("s3") or {}) - {"addressing_style"}


# --- SigV4 ----------------------------------------------------------------------------


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def canonical_query(query: Mapping[str, str]) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def sign(
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    when: datetime.datetime,
    payload_hash: str = UNSIGNED_PAYLOAD,
    key_cache: dict[tuple[str, str, str], bytes] | None = None,
) -> dict[str, str]:
    """The headers that authenticate a request: ``path`` is already URI-encoded.

    Signs ``host``, ``x-amz-content-sha256``, ``x-amz-date``, the session token if any,
    and every header in ``headers``.
    """
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    signed: dict[str, str] = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed["host"] = host
    signed["x-amz-content-sha256"] = payload_hash
    signed["x-amz-date"] = amz_date
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            path,
            canonical_query(query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    cache_key = (credentials.secret_key, date, region)
    key = key_cache.get(cache_key) if key_cache is not None else None
    if key is None:
        key = signing_key(credentials.secret_key, date, region)
        if key_cache is not None:
            key_cache.clear()  # one date and region at a time
            key_cache[cache_key] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        ),
    }
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    return out


# --- the client -------------------------------------------------------------------------


class S3Client:
    """Signed S3 requests over ``http1`` connections and one aiohttp session.

    ``credentials`` is a botocore credentials object (frozen on each request, so refreshes
    apply) or None for anonymous access. ``endpoint`` is ``scheme://host[:port]``.
    """

    def __init__(
        self,
        endpoint: str,
        region: str,
        credentials: Any,
        path_style: bool,
        ssl_context: ssl.SSLContext | bool = True,
        connections: int = 64,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        retry_base: float = RETRY_BASE,
        write_timeout: float | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._endpoint = URL(self.endpoint)
        if self._endpoint.path not in ("", "/") or self._endpoint.user:
            raise ValueError(f"{endpoint}: an S3 endpoint with a path or user info")
        self.region = region
        self._credentials = credentials
        self._path_style = path_style
        self._ssl = ssl_context
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._write_timeout = read_timeout if write_timeout is None else write_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pools: dict[str, http1.Pool] = {}
        self._file_pools: dict[str, http1.FilePool] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._retry_base = retry_base
        self._session: aiohttp.ClientSession | None = None
        # HTTP(S)_PROXY and NO_PROXY, as botocore honours them; read once, since aiohttp's
        # trust_env reads them (and ~/.netrc) on every request: 0.4 ms of CPU each.
        self._proxy = env_proxy(self._endpoint)
        self._closed = False
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._bucket_regions: dict[str, str] = {}
        #: Told the operation of every request sent (each attempt).
        self.on_request: RequestCounter = ignore_request
        #: Every request body takes its bytes from it as it is sent (``bandwidth_limit``).
        self.throttle: Limiter = throttle.UNLIMITED

    @classmethod
    def from_botocore(cls, client: Any, connections: int = 64) -> S3Client | None:
        """A client with the endpoint, region, addressing style, TLS settings and
        credentials of the botocore (or aiobotocore) S3 ``client``; None if that client is
        configured for something this one does not do (FIPS, dual-stack or accelerate
        endpoints, an endpoint with a path)."""
        # botocore comes with the s3 extra; trialsync imports without it.
        from botocore import UNSIGNED
        from botocore.httpsession import get_cert_path

        meta = client.meta
        s3_config = (meta.config.s3 or {}) if meta.config is not None else {}
        special = {"use_fips_endpoint", "use_dualstack_endpoint"}
        if set(s3_config) - {"addressing_style"} or any(
            getattr(meta.config, name, False) for name in special
        ):
            return None
        endpoint = meta.endpoint_url
        host = urlsplit(endpoint).hostname or ""
        style = s3_config.get("addressing_style", "auto")
        path_style = style == "path" or (style != "virtual" and not _is_aws(host))
        # The CA bundle botocore would use (AWS_CA_BUNDLE, the verify option, else certifi).
        verify = getattr(getattr(client, "_endpoint", None), "http_session", None)
        verify = getattr(verify, "_verify", True)
        context: ssl.SSLContext | bool = False
        if verify is not False and urlsplit(endpoint).scheme == "https":
            # Loading the CA bundle takes tens of milliseconds: not for a plain endpoint.
            context = ssl.create_default_context(cafile=get_cert_path(verify))
        credentials = getattr(client._request_signer, "_credentials", None)
        if getattr(meta.config, "signature_version", None) is UNSIGNED:
            credentials = None
        try:
            return cls(
                endpoint,
                meta.region_name or "us-east-1",
                credentials,
                path_style,
                ssl_context=context,
                connections=connections,
                connect_timeout=float(getattr(meta.config, "connect_timeout", 10) or 10),
                read_timeout=float(getattr(meta.config, "read_timeout", 60) or 60),
            )
        except ValueError:
            return None

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"the S3 client for {self.endpoint} is closed")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connections, ssl=self._ssl, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _address(self, host: str) -> http1.Endpoint:
        """Where ``http1`` connects for the Host header ``host``."""
        if self._closed:
            raise RuntimeError(f"the S3 client for {self.endpoint} is closed")
        context = _lean_context(self._ssl) if self._endpoint.scheme == "https" else None
        name = URL(f"{self._endpoint.scheme}://{host}")
        return http1.Endpoint(
            name.raw_host or "",
            name.port or 443,
            context,
            self._connect_timeout,
            self._read_timeout,
        )

    def _pool(self, host: str) -> http1.Pool:
        """The keep-alive connections for small requests to ``host``."""
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = http1.Pool(self._address(host), self._connections)
        return pool

    def _file_pool(self, host: str) -> http1.FilePool:
        """The blocking connections for downloads from ``host``."""
        pool = self._file_pools.get(host)
        if pool is None:
            pool = self._file_pools[host] = http1.FilePool(self._address(host))
        return pool

    async def _fetch_into(
        self, host: str, target: str, headers: Mapping[str, str], into: Into
    ) -> tuple[int, Mapping[str, str], bytes]:
        """A GET whose successful body a worker thread writes into the file."""
        fd, start, written = into
        pool = self._file_pool(host)
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._connections, thread_name_prefix="s3-get")
        call = http1.Call(http1.request_message("GET", target, headers), fd, start)
        loop = asyncio.get_running_loop()
        try:
            status, answer_headers, error, count = await loop.run_in_executor(
                self._threads, pool.fetch, call
            )
        except asyncio.CancelledError:
            call.cancel()  # the thread's socket is shut down: it ends at once
            raise
        written[0] = count
        return status, answer_headers, error

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for file_pool in self._file_pools.values():
            file_pool.close()
        self._file_pools.clear()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- operations --------------------------------------------------------------------

    async def put_object(self, bucket: str, key: str, body: bytes | memoryview) -> str:
        """Store ``body`` at ``key``; the ETag."""
        headers, _ = await self._request("PUT", bucket, key, {}, body)
        return headers.get("ETag", "")

    async def create_multipart_upload(self, bucket: str, key: str) -> str:
        _, data = await self._request("POST", bucket, key, {"uploads": ""}, b"")
        upload_id = _find_text(_parse(data, f"POST s3://{bucket}/{key}?uploads"), "UploadId")
        if not upload_id:
            raise S3Error(f"s3://{bucket}/{key}: no UploadId in the answer", 200, "")
        return upload_id

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: bytes | memoryview
    ) -> str:
        query = {"partNumber": str(number), "uploadId": upload_id}
        headers, _ = await self._request("PUT", bucket, key, query, body)
        etag = headers.get("ETag")
        if not etag:
            raise S3Error(f"s3://{bucket}/{key}: part {number} has no ETag", 200, "")
        return etag

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, etags: Mapping[int, str]
    ) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
            for n, etag in sorted(etags.items())
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        # S3 may answer 200 with an error document: _request treats that as the error.
        await self._request("POST", bucket, key, {"uploadId": upload_id}, body)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._request("DELETE", bucket, key, {"uploadId": upload_id}, b"")

    async def get_object(self, bucket: str, key: str) -> bytes:
        """The whole object (small ones: manifests)."""
        _, data = await self._request("GET", bucket, key, {}, b"")
        return data

    async def get_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the object: one ranged GET."""
        _, data = await self._request(
            "GET", bucket, key, {}, b"", extra_headers={"Range": byte_range(start, end)}
        )
        return data

    async def get_range_into(self, bucket: str, key: str, start: int, end: int, fd: int) -> int:
        """Bytes ``start`` to ``end`` (exclusive) of the object, written to the file ``fd``
        at the same offsets as they arrive (never held whole). A retry writes them again.
        Returns how many bytes the last attempt wrote."""
        written: list[int] = [0]
        await self._request(
            "GET",
            bucket,
            key,
            {},
            b"",
            extra_headers={"Range": byte_range(start, end)},
            into=(fd, start, written),
        )
        return written[0]

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete ``key``; a missing key is not an error (S3 answers 204 either way)."""
        try:
            await self._request("DELETE", bucket, key, {}, b"")
        except FileNotFoundError as exc:
            if getattr(exc, "code", "") == "NoSuchBucket":
                raise

    async def list_objects(
        self, bucket: str, prefix: str, page_size: int = 1000
    ) -> AsyncIterator[Listed]:
        """Every object under ``prefix``, page by page (ListObjectsV2)."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if page_size != 1000:
                query["max-keys"] = str(page_size)
            if token:
                query["continuation-token"] = token
            _, data = await self._request("GET", bucket, "", query, b"")
            items, token = parse_listing(data, f"GET s3://{bucket}/?prefix={prefix}")
            for item in items:
                yield item
            if token is None:
                return

    # -- plumbing ----------------------------------------------------------------------

    def _url(self, bucket: str, key: str, region: str) -> tuple[str, str, str]:
        """(base URL, Host header, encoded path) for ``bucket``/``key``."""
        endpoint = self._endpoint
        name = endpoint.raw_host or ""
        if ":" in name:  # an IPv6 literal
            name = f"[{name}]"
        host = name if endpoint.is_default_port() else f"{name}:{endpoint.port}"
        if region != self.region and _is_aws(name):
            host = f"s3.{region}.amazonaws.com"
        encoded_key = quote(key, safe="/~")
        if self._path_style or "." in bucket:
            path = f"/{bucket}/{encoded_key}" if key else f"/{bucket}"
        else:
            host = f"{bucket}.{host}"
            path = f"/{encoded_key}"
        return f"{endpoint.scheme}://{host}", host, path

    async def _frozen(self) -> Credentials | None:
        if self._credentials is None:
            return None
        frozen = self._credentials.get_frozen_credentials()
        if inspect.isawaitable(frozen):
            frozen = await frozen
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    async def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Mapping[str, str],
        body: bytes | memoryview,
        extra_headers: Mapping[str, str] | None = None,
        into: Into | None = None,
    ) -> tuple[Mapping[str, str], bytes]:
        """Send one request; its headers and body. ``extra_headers`` are sent unsigned;
        with ``into``, a successful answer's body goes to that file instead.

        Throttling, 5xx and connection errors are retried up to ``ATTEMPTS`` times in all;
        a bucket in another region is followed once.
        """
        where = f"{method} s3://{bucket}/{key}"
        attempt = 0
        followed = False
        while True:
            attempt += 1
            region = self._bucket_regions.get(bucket, self.region)
            try:
                status, headers, data = await self._send(
                    method, bucket, key, query, body, region, extra_headers, into
                )
            except (
                TimeoutError,
                http1.TransportError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            ) as exc:
                if attempt >= ATTEMPTS:
                    raise OSError(f"{where}: {exc or type(exc).__name__}") from exc
                await self._backoff(attempt, where, exc)
                continue
            if status < 300 and not (method == "POST" and _is_error_document(data)):
                return headers, data
            hinted = headers.get("x-amz-bucket-region") or _region_in(data)
            if hinted and hinted != region and status in (301, 400, 403) and not followed:
                log.info("bucket %s is in region %s; retrying there", bucket, hinted)
                self._bucket_regions[bucket] = hinted
                followed, attempt = True, attempt - 1
                continue
            error = _error(status, data, where)
            retryable = status in _RETRY_STATUS or error.code in _RETRY_CODES
            if not retryable or attempt >= ATTEMPTS:
                raise error
            await self._backoff(attempt, where, error)

    async def _backoff(self, attempt: int, what: str, exc: BaseException) -> None:
        delay = backoff.delay(attempt, self._retry_base, RETRY_CAP, jitter=True)
        log.warning("%s failed (%s); retry %d in %.2f s", what, exc, attempt, delay)
        await asyncio.sleep(delay)

    async def _send(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Mapping[str, str],
        body: bytes | memoryview,
        region: str,
        extra_headers: Mapping[str, str] | None = None,
        into: Into | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        self.on_request(operation_of(method, query))
        base, host, path = self._url(bucket, key, region)
        headers = {"Host": host}  # exactly what was signed
        credentials = await self._frozen()
        if credentials is not None:
            headers.update(
                sign(
                    method,
                    host,
                    path,
                    query,
                    {},
                    credentials,
                    region,
                    datetime.datetime.now(datetime.UTC),
                    UNSIGNED_PAYLOAD,
                    self._keys,
                )
            )
        if len(body) or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        if extra_headers:
            headers.update(extra_headers)
        qs = canonical_query(query)
        target = f"{path}?{qs}" if qs else path
        if self._proxy is None:
            if into is not None:  # a download: written by a thread, off the event loop
                return await self._fetch_into(host, target, headers, into)
            if len(body) <= UNWATCHED_BODY:
                # The common case, a small request: without aiohttp's per-request CPU.
                if len(body):
                    await self.throttle.take(len(body))
                return await self._pool(host).request(method, target, headers, body)
        url = URL(f"{base}{target}", encoded=True)
        session = self._client()
        async with asyncio.timeout(None) as watchdog:
            data: Any = body if len(body) else None
            if 0 < len(body) <= UNWATCHED_BODY:  # through a proxy
                await self.throttle.take(len(body))
            if len(body) > UNWATCHED_BODY:
                loop = asyncio.get_running_loop()

                def progress() -> None:
                    watchdog.reschedule(loop.time() + self._write_timeout)

                progress()  # connecting and the first slice count too
                data = _chunks(body, progress, self.throttle)
            # No redirects: a streamed body cannot be sent twice, and S3 does not redirect
            # signed requests anyway (a wrong region is a 301 with the right one named).
            async with session.request(
                method, url, data=data, headers=headers, allow_redirects=False, proxy=self._proxy
            ) as response:
                watchdog.reschedule(None)  # the body is sent: read_timeout bounds the rest
                if into is not None and response.status < 300:
                    fd, start, written = into
                    written[0] = 0
                    async for chunk in response.content.iter_any():
                        local_files.write_at(fd, chunk, start + written[0])
                        written[0] += len(chunk)
                    answer = b""
                else:
                    answer = await response.read()
        return response.status, response.headers, answer


async def _chunks(
    body: bytes | memoryview, progress: Callable[[], None], limit: Limiter = throttle.UNLIMITED
) -> AsyncIterator[memoryview]:
    """``body`` in slices: aiohttp then copies none of it into a joined buffer, and the
    transport buffers at most one slice's unsent tail instead of the whole body.

    ``progress`` is called each time aiohttp asks for the next slice, which it does once
    the previous one went to the socket (it waits for the transport to drain first).
    With a ``limit``, each slice takes its bytes just before it goes (the wait for them is
    not a stalled peer: the write watchdog starts after it)."""
    view = memoryview(body)
    step = WRITE_CHUNK if limit is throttle.UNLIMITED else THROTTLED_CHUNK
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        await limit.take(len(piece))
        progress()
        yield piece
    progress()  # the last slice is written: the answer's headers are next


def operation_of(method: str, query: Mapping[str, str]) -> str:
    """The ``trialsync_store_requests_total`` operation of an S3 request."""
    if method == "GET":
        return "list" if "list-type" in query else "get"
    if method == "PUT":
        return "put_part" if "partNumber" in query else "put"
    if method == "POST":
        return "multipart_start" if "uploads" in query else "multipart_complete"
    if method == "DELETE":
        return "multipart_abort" if "uploadId" in query else "delete"
    return "head" if method == "HEAD" else "other"


def _lean_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    """The TLS context of ``http1`` requests for aiohttp's ``ssl`` setting ``verify``."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return ssl.create_default_context()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def env_proxy(endpoint: URL) -> str | None:
    """The proxy for ``endpoint`` from HTTP_PROXY/HTTPS_PROXY, unless NO_PROXY covers it."""
    proxy = urllib.request.getproxies_environment().get(endpoint.scheme)
    if not proxy or urllib.request.proxy_bypass(endpoint.host or ""):
        return None
    return proxy


def _is_aws(host: str) -> bool:
    return host == "amazonaws.com" or host.endswith(".amazonaws.com")


def _error(status: int, data: bytes, what: str) -> S3Error:
    code = message = ""
    if data:
        try:
            root = ET.fromstring(data)
            code = _find_text(root, "Code") or ""
            message = _find_text(root, "Message") or ""
        except ET.ParseError:
            message = data[:200].decode(errors="replace")
    text = f"{what}: HTTP {status} {code}: {message}".rstrip(": ")
    if status == 404 or code in ("NoSuchBucket", "NoSuchKey", "NoSuchUpload"):
        return S3NotFound(text, status, code)
    if status == 403:
        return S3Forbidden(text, status, code)
    return S3Error(text, status, code)


def parse_listing(data: bytes, what: str) -> tuple[list[Listed], str | None]:
    """One ListObjectsV2 page: its objects, and the continuation token if truncated."""
    root = _parse(data, what)
    # Keys are URL-encoded only if the server says so (not every S3 does).
    encoded = _find_text(root, "EncodingType") == "url"
    items = [_listed(item, encoded) for item in _children(root, "Contents")]
    if _find_text(root, "IsTruncated") != "true":
        return items, None
    token = _find_text(root, "NextContinuationToken")
    if not token:
        raise S3Error(f"{what}: a truncated listing without a continuation token", 200, "")
    return items, token


def _parse(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise S3Error(f"{what}: unreadable answer: {exc}", 200, "") from exc


def _is_error_document(data: bytes) -> bool:
    if not data:
        return False
    try:
        return ET.fromstring(data).tag in ("Error", f"{_NS}Error")
    except ET.ParseError:
        return False


def _region_in(data: bytes) -> str | None:
    if not data:
        return None
    try:
        return _find_text(ET.fromstring(data), "Region")
    except ET.ParseError:
        return None


def _children(root: ET.Element, name: str) -> list[ET.Element]:
    return root.findall(f"{_NS}{name}") or root.findall(name)


def _text(item: ET.Element, name: str) -> str | None:
    found = item.findtext(f"{_NS}{name}")
    return found if found is not None else item.findtext(name)


def _find_text(root: ET.Element, name: str) -> str | None:
    found = root.find(f"{_NS}{name}")
    if found is None:
        found = root.find(name)
    return found.text if found is not None else None


def _listed(item: ET.Element, encoded: bool) -> Listed:
    key = _text(item, "Key") or ""
    modified = _text(item, "LastModified")
    etag = _text(item, "ETag")
    return Listed(
        key=unquote_plus(key) if encoded else key,
        size=int(_text(item, "Size") or 0),
        mtime=datetime.datetime.fromisoformat(modified).timestamp() if modified else None,
        etag=etag.strip('"') if etag else None,
    )


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
