"""A ``Store`` that is the head-node service (seed scenario 3: no upload dir).

Talks to ``trialsync._head.receiver`` over HTTPS (plain HTTP only for an ``http://`` URL,
a head run by hand). ``ssl_context`` says whom to trust: in Kubernetes the head's CA alone
(``--head-ca-file``), checked with the Service's DNS name, so a server that cannot prove
it is the head (another certificate, or no TLS) fails the handshake before this worker
sends it anything, the token included: ``HeadNotTrusted``, never retried. The shared
token is used once, to register; every other request carries this worker's own identity.
The identity is kept in ``identity_file`` (the sidecar's scratch dir), so a sidecar
restarted in the same pod keeps it, and with it its claims on trial dirs. ``close()``
releases those claims: the sidecar closes its store when it exits, after its final sync.

Errors raise: a refused object ``ObjectRefused`` (a ``PermissionError``: 403 for a path
in a trial dir another worker holds, or one only the head writes, 413 for one over the
head's size limit; the message names the path and the holder or reason, and only that
object's checkpoint or artifact should fail), other 401/403 ``PermissionError`` (a wrong
token: every request fails), 404 ``FileNotFoundError``, a local file that shrinks while
it is sent ``OSError``, any other non-2xx ``HeadStoreError``; each message has the method,
URL, status and the receiver's answer.

Timeouts, per attempt: connecting and each read of the answer (``timeout``); sending a
file's body, which must make progress every ``write_timeout`` seconds (aiohttp has no
bound there: a head that stops reading would hold the upload until the sync's own
timeout), ``TimeoutError`` when it does not.

A busy receiver (503) or one that cannot be reached is retried with jittered exponential
backoff that honours ``Retry-After``, up to ``RETRIES`` times; an identity the head no
longer knows (401) is replaced by registering again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import IO, Any, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from trialsync._head.protocol import (
    CLAIMS_PATH,
    MTIME_HEADER,
    OBJECTS_PATH,
    REASON_CLAIMED,
    REASON_HEAD_ONLY,
    REASON_NOT_TRUSTED,
    REASON_TOO_LARGE,
    REGISTER_PATH,
)
from trialsync._stores.base import ObjectRefused, RemoteObject, byte_range
from trialsync._util import backoff, private_files, tasks, throttle
from trialsync._util.throttle import Limiter
from trialsync.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_CHUNK = 1 << 20
# No total timeout: a large checkpoint may take longer than any fixed bound, and the engine
# cancels a hung sync at syncTimeout. Connect and per-read stalls still fail fast enough.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
DEFAULT_WRITE_TIMEOUT = 300.0
# Retries of a busy (503) or unreachable head wait 0.5, 1, 2, 4, 8, 15, 15 and 15 s (at
# least Retry-After; each times a random 1 to 1.5): about 90 s at most. Then the sync
# fails, and the scheduler retries it with its own backoff.
RETRIES = 8
RETRY_BASE = 0.5
RETRY_CAP = 15.0
DELETES_IN_FLIGHT = 16
# Releasing claims at exit waits at most this long (a head that is down cannot answer), so
# closing the store fits in the part of the SIGTERM budget kept back from the final sync.
RELEASE_TIMEOUT = 2.0


class HeadStoreError(RuntimeError):
    """The receiver answered with an unexpected status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HeadNotTrusted(PermissionError):
    """The server at the head's URL did not prove it is the head (TLS); nothing was sent."""


class HeadStore:
    """Objects on the head node, addressed by rel paths under ``prefix``.

    ``identity_file``: where the identity is kept (None: in memory only). ``name``: sent at
    registration, so the head's logs and refusals name this worker (default: the host
    name, which is the pod's name in Kubernetes).
    """

    verifiable = True

    def __init__(
        self,
        head_url: str,
        token: str,
        prefix: str = "",
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        *,
        identity_file: str | None = None,
        name: str | None = None,
        metrics: Metrics | None = None,
        write_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limiter: Limiter = throttle.UNLIMITED,
    ) -> None:
        self.head_url = head_url.rstrip("/")
        # ``bandwidth_limit``: each file's bytes are taken before it is streamed.
        self._limiter = limiter
        self._ssl = ssl_context
        self.prefix = prefix.strip("/")
        self.identity_file = identity_file
        self._token = token
        self._name = name or socket.gethostname()
        self._metrics = metrics
        self._timeout = timeout
        self._write_timeout = write_timeout or timeout.sock_read or DEFAULT_WRITE_TIMEOUT
        self._session: aiohttp.ClientSession | None = None
        self._identity: str | None = None
        self._forgotten: set[str] = set()  # identities the head refused: never reused
        self._registering = asyncio.Lock()

    def _full(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def url(self, rel: str) -> str:
        return f"{self.head_url}{OBJECTS_PATH}/{self._full(rel)}"

    def _object_url(self, rel: str) -> URL:
        # encoded=True: the path goes out exactly as quoted here (no dot-segment folding),
        # and characters Ray puts in trial names ("=", ",") survive the round trip.
        quoted = quote(self._full(rel), safe="/")
        return URL(f"{self.head_url}{OBJECTS_PATH}/{quoted}", encoded=True)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the loop that runs the syncs.
        if self._session is None or self._session.closed:
            # ssl=True: an https URL without a context of ours is checked against the
            # system's trust store; never unverified.
            connector = aiohttp.TCPConnector(ssl=self._ssl or True)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    async def put_file(self, local_path: str, rel: str, size: int | None = None) -> None:
        """Stream ``local_path`` (never read whole) and keep its mtime on the head node.

        ``size``: the bytes to send (default: the size when opened). ``Expect:
        100-continue``: a refused or busy answer comes before the body is sent.
        """
        handle = await asyncio.to_thread(open, local_path, "rb")
        try:
            st = os.fstat(handle.fileno())
            size = st.st_size if size is None else size
            await self._limiter.take(size)
            headers = {
                "Content-Length": str(size),
                MTIME_HEADER: str(st.st_mtime_ns),
                "Content-Type": "application/octet-stream",
            }
            # Exactly `size` bytes: a file that grows meanwhile must not overrun the length.
            body = _FileBody(handle, size, local_path)
            await self._call("PUT", self._object_url(rel), _nothing, body=body, headers=headers)
        finally:
            handle.close()

    async def put_bytes(self, rel: str, data: bytes) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        await self._limiter.take(len(data))
        await self._call("PUT", self._object_url(rel), _nothing, body=data, headers=headers)

    async def read_bytes(self, rel: str) -> bytes:
        return await self._call("GET", self._object_url(rel), _read)

    async def read_range(self, rel: str, start: int, end: int) -> bytes:
        headers = {"Range": byte_range(start, end)}
        return await self._call("GET", self._object_url(rel), _read, headers=headers)

    async def list(self, rel_prefix: str = "") -> dict[str, RemoteObject]:
        """Every object at or below ``rel_prefix``, keyed relative to this store's prefix."""
        url = URL(f"{self.head_url}{OBJECTS_PATH}")
        params = {"prefix": self._full(rel_prefix)}
        payload = await self._call("GET", url, _json, params=params)
        cut = len(self.prefix) + 1 if self.prefix else 0
        return {
            rel[cut:]: RemoteObject(size=int(info["size"]), mtime=float(info["mtime"]))
            for rel, info in payload["objects"].items()
        }

    async def stat(self, rel: str) -> RemoteObject | None:
        """The object at ``rel`` on the head, or None (a listing of it alone)."""
        return (await self.list(rel)).get(rel)

    async def delete(self, rels: Iterable[str]) -> None:
        """Delete every object in ``rels``; missing ones are not an error.

        A failure is raised as itself (a refusal stays a PermissionError).
        """
        rels = list(rels)

        async def one(rel: str) -> None:
            await self._call("DELETE", self._object_url(rel), _nothing)

        await tasks.bounded(DELETES_IN_FLIGHT, rels, one)

    async def connect(self) -> None:
        """Open the session and get an identity: readiness means the head takes our writes."""
        self._client()
        await self._credential()

    async def close(self) -> None:
        """Release this worker's claims on trial dirs, then close the connections.

        The sidecar closes its store only when it exits, after its final sync: another
        worker (a Job's retry pod, a trial restored elsewhere) may then take them over
        without waiting out the head's claim lease.
        """
        try:
            if self._identity is not None and self._session is not None:
                await self._release_claims()
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def _release_claims(self) -> None:
        url = URL(f"{self.head_url}{CLAIMS_PATH}")
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                answer = await self._call("DELETE", url, _json, retries=0)
        except (OSError, HeadStoreError, TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "claims on trial dirs not released; they lapse after the head's claim lease",
                extra={"head_url": self.head_url, "error": f"{type(exc).__name__}: {exc}"},
            )
            return
        released = answer.get("released") if isinstance(answer, dict) else None
        log.info("claims on trial dirs released", extra={"trial_dirs": released})

    # -- identity --------------------------------------------------------------------------

    async def _credential(self) -> str:
        if self._identity is None:
            async with self._registering:
                if self._identity is None:
                    self._identity = await self._load_or_register()
        return self._identity

    async def _load_or_register(self) -> str:
        if self.identity_file:
            kept = await asyncio.to_thread(_read_identity, self.identity_file, self.head_url)
            if kept is not None and kept not in self._forgotten:
                return kept
        body = json.dumps({"name": self._name}).encode()
        url = URL(f"{self.head_url}{REGISTER_PATH}")
        headers = {"Content-Type": "application/json"}
        answer = await self._call("POST", url, _json, body=body, headers=headers, shared=True)
        identity = str(answer["identity"])
        log.info("registered with the head-node service", extra={"id": answer["id"]})
        if self.identity_file:
            kept_file = json.dumps({"head_url": self.head_url, "identity": identity}).encode()
            try:
                await asyncio.to_thread(private_files.write_private, self.identity_file, kept_file)
            except OSError as exc:
                log.warning(
                    "identity not kept: a restarted sidecar registers again, and waits out "
                    "the claim lease of the trial dirs this one claimed",
                    extra={"path": self.identity_file, "error": str(exc)},
                )
        return identity

    async def _forget(self, identity: str) -> None:
        """The head does not know ``identity`` (it lost its state): register again."""
        async with self._registering:
            if self._identity == identity:
                log.warning("the head-node service does not know this worker; registering again")
                self._identity = None
                self._forgotten.add(identity)

    # -- requests --------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: URL,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        body: _FileBody | bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        shared: bool = False,
        retries: int | None = None,
    ) -> T:
        """One request, retried while the head is busy or unreachable; ``read``'s result.

        ``shared``: authenticate with the shared token (registration) instead of the
        identity, which is registered again once if the head answers 401.
        """
        retries = RETRIES if retries is None else retries
        attempt = 0
        registered_again = False
        operation = _operation(method, url, params)
        while True:
            credential = self._token if shared else await self._credential()
            if self._metrics is not None:
                self._metrics.count_request(operation)
            sent = {**(headers or {}), "Authorization": f"Bearer {credential}"}
            watchdog = asyncio.timeout(None)
            try:
                async with watchdog:
                    data = self._watched(body, watchdog)
                    async with self._client().request(
                        method,
                        url,
                        data=data,
                        params=params,
                        headers=sent,
                        expect100=isinstance(body, _FileBody),
                    ) as response:
                        watchdog.reschedule(None)  # sent: the read timeout bounds the rest
                        if response.status == 401 and not shared and not registered_again:
                            registered_again = True
                            await self._forget(credential)
                            continue
                        if response.status == 503 and attempt < retries:
                            attempt += 1
                            await self._pause(attempt, response.headers.get("Retry-After"), url)
                            continue
                        await self._check(response)
                        return await read(response)
            except aiohttp.ClientSSLError as exc:
                # Not the head (or a misconfigured one): waiting will not change that, and
                # the scheduler retries the sync anyway.
                if self._metrics is not None:
                    self._metrics.head_refusals.labels(REASON_NOT_TRUSTED).inc()
                log.error(
                    "the server at the head's address is not the head-node service: "
                    "nothing was sent to it",
                    extra={"url": str(url), "error": f"{type(exc).__name__}: {exc}"},
                )
                raise HeadNotTrusted(
                    f"{method} {url}: the server did not prove it is the head-node service "
                    f"(TLS: {exc}); nothing was sent to it"
                ) from exc
            except aiohttp.ClientConnectionError as exc:
                if isinstance(body, _FileBody) and body.error is not None:
                    raise body.error from exc  # our own file, not the connection, failed
                if isinstance(exc, aiohttp.ServerTimeoutError) or attempt >= retries:
                    raise
                attempt += 1
                await self._pause(attempt, None, url, exc)
            except TimeoutError as exc:
                if not watchdog.expired():
                    raise
                raise TimeoutError(
                    f"{method} {url}: the head took no more of the body for "
                    f"{self._write_timeout:g} s"
                ) from exc

    def _watched(
        self, body: _FileBody | bytes | None, watchdog: asyncio.Timeout
    ) -> AsyncIterator[bytes] | bytes | None:
        """``body`` as aiohttp sends it; a file's each chunk, and the connection and the
        wait for ``100 Continue`` before it, must make progress within ``write_timeout``."""
        if not isinstance(body, _FileBody):
            return body
        loop = asyncio.get_running_loop()

        def progress() -> None:
            watchdog.reschedule(loop.time() + self._write_timeout)

        progress()
        return body.chunks(progress)

    async def _pause(
        self, attempt: int, retry_after: str | None, url: URL, error: Exception | None = None
    ) -> None:
        floor = float(retry_after) if retry_after and retry_after.isdigit() else 0.0
        delay = max(floor, backoff.delay(attempt, RETRY_BASE, RETRY_CAP))
        delay *= random.uniform(1.0, 1.5)  # spread the workers a busy head turned away
        if self._metrics is not None:
            self._metrics.head_busy_retries.inc()
        log.info(
            "head-node service busy or unreachable; retrying",
            extra={
                "url": str(url),
                "attempt": attempt,
                "retry_in": round(delay, 2),
                "error": f"{type(error).__name__}: {error}" if error else "HTTP 503",
            },
        )
        await asyncio.sleep(delay)

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 300:
            return
        text = (await response.text(errors="replace")).strip()
        try:
            answer = json.loads(text)
            error, reason = str(answer["error"]), str(answer.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            error, reason = text[:500], ""  # not the receiver's answer (a proxy's page?)
        message = f"{response.method} {response.url}: HTTP {response.status}: {error}"
        if response.status in (403, 413):
            reason = reason or (REASON_TOO_LARGE if response.status == 413 else "forbidden")
            if self._metrics is not None:
                self._metrics.head_refusals.labels(reason).inc()
            log.warning(
                "refused by the head-node service",
                extra={"url": str(response.url), "reason": reason, "error": error},
            )
            if reason in _OBJECT_REASONS:
                raise ObjectRefused(message, self._rel_of(response.url), reason)
        if response.status in (401, 403):
            raise PermissionError(message)
        if response.status == 404:
            raise FileNotFoundError(message)
        raise HeadStoreError(message, response.status)

    def _rel_of(self, url: URL) -> str:
        """The store-relative path an object URL addresses."""
        full = url.path.split(f"{OBJECTS_PATH}/", 1)[-1]
        return full[len(self.prefix) + 1 :] if self.prefix else full


# Refusals of one object (not of this worker): its checkpoint or artifact fails alone.
_OBJECT_REASONS = {REASON_CLAIMED, REASON_HEAD_ONLY, REASON_TOO_LARGE}


class _FileBody:
    """Exactly ``size`` bytes of an open file, from its start each time it is sent.

    A file that shrinks while it is sent aborts the request; ``error`` then says so, since
    the client reports it as a connection error.
    """

    def __init__(self, handle: IO[bytes], size: int, path: str) -> None:
        self.handle, self.size, self.path = handle, size, path
        self.error: OSError | None = None

    async def chunks(self, progress: Callable[[], None]) -> AsyncIterator[bytes]:
        """The bytes in chunks; ``progress`` is called each time aiohttp asks for the next
        one, which it does once the previous one went to the socket."""
        # Positional reads: no seek back to the start (a worker-thread hop) for each send.
        fd = self.handle.fileno()
        done = 0
        while done < self.size:
            progress()
            chunk = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, self.size - done), done)
            if not chunk:
                self.error = OSError(
                    f"{self.path}: truncated while uploading ({done} of {self.size} bytes)"
                )
                raise self.error
            done += len(chunk)
            yield chunk
        progress()  # all of it is written: the answer's headers are next


def _read_identity(path: str, head_url: str) -> str | None:
    """The identity kept at ``path`` for ``head_url``; None if there is none that fits."""
    try:
        raw = private_files.read_private(path)
        kept = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("head_url") != head_url:
        return None
    identity = kept.get("identity")
    return identity if isinstance(identity, str) and identity else None


def _operation(method: str, url: URL, params: dict[str, str] | None) -> str:
    """The ``trialsync_store_requests_total`` operation of a request to the head."""
    if OBJECTS_PATH not in url.path:
        return "other"  # registration, claims
    if method == "GET":
        return "list" if params is not None else "get"
    return {"PUT": "put", "DELETE": "delete"}.get(method, "other")


async def _nothing(response: aiohttp.ClientResponse) -> None:
    await response.release()


async def _read(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


async def _json(response: aiohttp.ClientResponse) -> Any:
    return await response.json()
