"""The head-node service: worker sidecars sync trial dirs into the head pod's volume.

Seed scenario 3 (no upload dir). Objects are addressed by root-relative POSIX paths.

**Who may do what.** One token is shared by the head and every worker of one SyncConfig
(the operator's Secret, mounted as a file). It only registers a worker (anywhere else: 403); every
other request carries the worker's own identity. ``GET /healthz`` needs neither.

- ``POST /v1/register`` with ``Authorization: Bearer <shared token>`` and an optional JSON
  body ``{"name": "<pod name>"}``: 201 ``{"id": "<name>-<12 hex>", "identity":
  "<id>.<mac>"}``. ``mac`` is HMAC-SHA256 of the id under a key only the head holds, so an
  identity cannot be forged and the head stores nothing per worker. The worker keeps it
  for its lifetime and sends ``Authorization: Bearer <identity>`` on every other request.
- Any identity may read (GET) anything but the state dir. A worker writes (PUT, DELETE)
  only inside a trial dir, ``<experiment>/<trial>/...``. Experiment state (files directly
  in ``<experiment>/``) and anything else outside a trial dir are the head's own: 403 to
  every worker.
- The first identity that writes in a trial dir claims it. Another identity's write there
  is refused with 403, naming the holder, until the holder releases its claims
  (``DELETE /v1/claims``, which a worker sends at exit) or has neither written there nor
  had a write in progress for the claim lease (``--receiver-claim-lease``). Claims are
  saved in the state dir before the write that made them is accepted, so a head restart
  keeps them (and gives every holder a full lease again).

**Endpoints.**

- ``PUT /v1/objects/{rel}``: the body, streamed to a temp file beside the target, fsynced
  and renamed over it, so a reader sees the old file or the whole new one, never a part.
  ``X-Trialsync-Mtime-Ns`` sets the file's mtime. 201 ``{"size": n}``. Before any body
  byte is read: 403 as above; 413 if ``Content-Length`` is over ``--receiver-max-object-
  size``; 503 with ``Retry-After`` (seconds) while ``--receiver-max-uploads`` uploads are
  in progress (the worker retries; nothing is queued). A request that sends ``Expect:
  100-continue`` gets ``100 Continue`` only once the upload is admitted, and a refusal
  instead (with ``Connection: close``), so a refused body is never sent. A body without a
  length (chunked) is counted as it arrives: 413 once over the limit, its temp file
  removed. A body cut short is discarded (400); one that stalls for 60 s too (408).
- ``GET /v1/objects/{rel}``: the bytes; 404 if missing.
- ``GET /v1/objects?prefix=<rel>``: ``{"objects": {rel: {"size", "mtime"}}}`` for every
  regular file at or below ``prefix`` ("" = all); temp files and the state dir are
  never listed.
- ``DELETE /v1/objects/{rel}``: 204, also when already missing. Then the dirs the deletion
  left empty below the trial dir are removed (an empty ``checkpoint_N`` dir would look like
  a checkpoint to a restoring trainer), never one an upload of this service is using, and
  never the trial dir or anything above it, which the trainer on the head may have made.
- ``DELETE /v1/claims``: 200 ``{"released": [trial dirs]}``, every claim of the caller.

Errors are JSON ``{"error": "<message naming the path>", "reason": ...}``; ``reason`` is
one of ``trialsync._head.protocol``'s ``REASON_*`` where a caller must tell refusals apart.
400: a malformed path or header. A path that is empty, absolute, has ``..``/``.``/empty
segments, a NUL or a backslash, names a temp file, or resolves (through symlinks) outside
the root or into the state dir is refused with 400. 401: no credential, a wrong token, or
an identity the head does not know (its state dir was lost: register again). 409: the path
conflicts with a file or dir.

**Transport.** With ``ReceiverOptions.tls`` (the injected sidecar always has it) the
service is HTTPS only, with the certificate the operator issued for the head Service's
DNS names; workers verify it against that certificate's CA alone, so a pod that only
labels itself head completes no handshake and is sent no token and no byte. Without it
(a head run by hand): plain HTTP.

**State and start-up.** The state dir (``--receiver-state-dir``, default
``<root>/.trialsync-head``) holds the identity key, the claims and a lock. One receiver
serves a root: a second one waits for the lock. Holding it, and before it listens, the
receiver removes the temp files a killed writer left (``.<name>.trialsync-tmp-<16 hex>``),
never following a symlink.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hmac
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import hdrs, web

from trialsync._head import files
from trialsync._head.claims import ClaimRefused, Claims
from trialsync._head.files import TEMP_MARKER, TempFile, Tree
from trialsync._head.identity import Issuer
from trialsync._head.protocol import (
    CLAIMS_PATH,
    MTIME_HEADER,
    OBJECTS_PATH,
    REASON_BUSY,
    REASON_CLAIMED,
    REASON_HEAD_ONLY,
    REASON_SHARED_TOKEN,
    REASON_TOO_LARGE,
    REGISTER_PATH,
    trial_dir,
)
from trialsync._util import http_site

log = logging.getLogger(__name__)

# Bytes gathered from the socket before one write to disk: bounds memory per upload while
# keeping thread hand-offs few.
WRITE_CHUNK = 1 << 20
# A client that sends nothing for this long is dropped and its temp file removed, so a
# stalled worker cannot hold a half-written file forever.
DEFAULT_IDLE_TIMEOUT = 60.0
# What a busy receiver asks a worker to wait; the worker adds backoff and jitter.
RETRY_AFTER_SECONDS = 1
KEY_FILE = "key"
CLAIMS_FILE = "claims.json"


@dataclasses.dataclass(frozen=True)
class ReceiverOptions:
    """How the receiver serves; the flags and their defaults are in ``_process.settings``."""

    token: str
    state_dir: str
    max_object_size: int
    max_uploads: int
    claim_lease: float
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: The head's certificate and key: serve HTTPS (always, in Kubernetes). None: plain
    #: HTTP, for a head and workers run by hand on a network the user trusts.
    tls: ssl.SSLContext | None = None


class BadRequest(ValueError):
    """A request the receiver refuses with 400; the message names what is wrong."""


class PathError(BadRequest):
    """A request path that is malformed or could reach outside the root."""


class Forbidden(Exception):
    """A request the receiver refuses with 403; the message names the path and why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def resolve(root: str, rel: str, *, allow_root: bool = False, reserved: str = "") -> str:
    """The absolute path of ``rel`` under the real path ``root``; PathError if it is unsafe.

    The returned path keeps ``rel``'s own last component (a symlink there is replaced by a
    PUT, not written through), but every symlink on the way must stay inside ``root``, and
    the path must not reach into ``reserved`` (the head's state dir).
    """
    if not rel:
        if allow_root:
            return root
        raise PathError("empty path")
    if "\x00" in rel or "\\" in rel:
        raise PathError(f"{rel!r}: NUL and backslash are not allowed")
    if rel.startswith("/"):
        raise PathError(f"{rel!r}: absolute paths are not allowed")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PathError(f"{rel!r}: empty, '.' and '..' segments are not allowed")
    if TEMP_MARKER in parts[-1]:
        raise PathError(f"{rel!r}: names containing {TEMP_MARKER!r} are reserved")
    candidate = os.path.join(root, *parts)
    real = os.path.realpath(candidate)
    if not _within(real, root):
        raise PathError(f"{rel!r}: resolves outside the root")
    if reserved and _within(real, reserved):
        raise PathError(f"{rel!r}: the head's state dir is not served")
    return candidate


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


class _Service:
    """The receiver's state: its root, key, claims, uploads in progress, lock."""

    def __init__(self, root: str, options: ReceiverOptions) -> None:
        if not options.token:
            raise ValueError("the head receiver needs a non-empty token")
        os.makedirs(root, exist_ok=True)
        os.makedirs(options.state_dir, mode=0o700, exist_ok=True)
        self.root = os.path.realpath(root)
        self.state_dir = os.path.realpath(options.state_dir)
        self.options = options
        self.token = options.token.encode()
        self.issuer = Issuer(os.path.join(self.state_dir, KEY_FILE))
        self.claims = Claims(os.path.join(self.state_dir, CLAIMS_FILE), options.claim_lease)
        self.tree = Tree()
        self.uploads = 0
        self._lock_fd = -1

    async def open(self, _: web.Application) -> None:
        self._lock_fd = await files.lock_state_dir(self.state_dir)
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self.issuer.load()
        self.claims.load()
        # Holding the lock and not yet listening: no upload of ours is in progress.
        removed = files.sweep_temp_files(self.root, self.state_dir)
        if removed:
            log.info("temp files of interrupted uploads removed", extra={"count": removed})

    async def close(self, _: web.Application) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def resolve(self, rel: str, *, allow_root: bool = False) -> str:
        return resolve(self.root, rel, allow_root=allow_root, reserved=self.state_dir)

    def trial_path(self, trial: str) -> str:
        return os.path.join(self.root, *trial.split("/"))

    @asynccontextmanager
    async def writing(self, rel: str, worker_id: str) -> AsyncIterator[str]:
        """Hold the trial dir of ``rel`` for one write; yields its absolute path."""
        trial = trial_dir(rel)
        if trial is None:
            raise Forbidden(
                f"{rel}: only the head writes experiment state and paths outside trial dirs "
                "(<experiment>/<trial>/...)",
                REASON_HEAD_ONLY,
            )
        try:
            async with self.claims.writing(trial, worker_id):
                yield self.trial_path(trial)
        except ClaimRefused as exc:
            raise Forbidden(f"{rel}: {exc}", REASON_CLAIMED) from None


_SERVICE = web.AppKey("service", _Service)
_WORKER = web.RequestKey("worker", str)  # the caller's id; absent for the shared token
_CONTINUED = web.RequestKey("continued", bool)


def make_app(root: str, options: ReceiverOptions) -> web.Application:
    """The receiver for files under ``root``; ValueError if the token is empty.

    Its start-up (``AppRunner.setup``) takes the state dir's lock, loads the key and the
    claims, and sweeps leftover temp files; its cleanup releases the lock.
    """
    service = _Service(root, options)
    app = web.Application(middlewares=[_errors, _authenticate])
    app[_SERVICE] = service
    app.on_startup.append(service.open)
    app.on_cleanup.append(service.close)
    objects = f"{OBJECTS_PATH}/{{rel:.+}}"
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.post(REGISTER_PATH, _register),
            web.delete(CLAIMS_PATH, _release),
            web.get(OBJECTS_PATH, _list),
            # 100 Continue is sent by the handler, once the upload is admitted.
            web.put(objects, _put, expect_handler=_defer_continue),
            web.get(objects, _get),
            web.delete(objects, _delete),
        ]
    )
    return app


async def start(root: str, addr: str, options: ReceiverOptions) -> tuple[web.AppRunner, int]:
    """Serve ``root`` on ``host:port`` (port 0 picks one), over TLS with ``options.tls``;
    returns the runner and the port."""
    app = make_app(root, options)
    runner, bound = await http_site.serve(app, addr, ssl_context=options.tls)
    log.info(
        "head receiver listening",
        extra={"root": app[_SERVICE].root, "port": bound, "tls": options.tls is not None},
    )
    return runner, bound


# -- middlewares ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(
    request: web.Request, status: int, message: str, reason: str = "", **headers: str
) -> web.Response:
    body = {"error": message, **({"reason": reason} if reason else {})}
    response = web.json_response(body, status=status, headers=headers)
    if _awaits_continue(request):
        # The client holds its body back for a 100 Continue that will not come; the
        # connection cannot carry another request after it.
        response.force_close()
    return response


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        log.warning("bad request", extra={"method": request.method, "reason": str(exc)})
        return _error(request, 400, str(exc))
    except Forbidden as exc:
        log.warning(
            "request refused",
            extra={
                "method": request.method,
                "error": str(exc),
                "reason": exc.reason,
                "worker": request.get(_WORKER),
            },
        )
        return _error(request, 403, str(exc), exc.reason)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    service = request.app[_SERVICE]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    credential = given.strip()
    if scheme.lower() == "bearer" and credential:
        # compare_digest: the time taken must not tell how much of a guess was right.
        if hmac.compare_digest(credential.encode(), service.token):
            return await handler(request)
        worker_id = service.issuer.verify(credential)
        if worker_id is not None:
            request[_WORKER] = worker_id
            return await handler(request)
    log.warning(
        "unauthenticated request refused", extra={"method": request.method, "peer": request.remote}
    )
    return _error(
        request,
        401,
        "missing or wrong bearer token or identity (an identity the head no longer knows "
        f"must register again: POST {REGISTER_PATH})",
        **{"WWW-Authenticate": 'Bearer realm="trialsync"'},
    )


def _worker(request: web.Request) -> str:
    """The caller's id; Forbidden for the shared token, which only registers."""
    if _WORKER not in request:
        raise Forbidden(
            f"{request.method} {request.path}: the shared token only registers a worker "
            f"(POST {REGISTER_PATH}); send the identity that returns",
            REASON_SHARED_TOKEN,
        )
    return request[_WORKER]


# -- handlers ------------------------------------------------------------------------------


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _register(request: web.Request) -> web.Response:
    if _WORKER in request:
        raise Forbidden(f"POST {REGISTER_PATH} takes the shared token", REASON_SHARED_TOKEN)
    raw = await request.read()
    try:
        name = json.loads(raw).get("name", "") if raw else ""
    except (ValueError, AttributeError) as exc:
        raise BadRequest(f'POST {REGISTER_PATH}: expected {{"name": "..."}}: {exc}') from None
    if not isinstance(name, str):
        raise BadRequest(f"POST {REGISTER_PATH}: name must be a string")
    worker_id, identity = request.app[_SERVICE].issuer.issue(name)
    log.info("worker registered", extra={"worker": worker_id, "peer": request.remote})
    return web.json_response({"id": worker_id, "identity": identity}, status=201)


async def _release(request: web.Request) -> web.Response:
    released = await request.app[_SERVICE].claims.release(_worker(request))
    return web.json_response({"released": released})


async def _put(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    rel = request.match_info["rel"]
    target = service.resolve(rel)
    worker_id = _worker(request)
    mtime_ns = _mtime_header(request)
    limit = service.options.max_object_size
    if request.content_length is not None and request.content_length > limit:
        log.warning("upload over the size limit refused", extra={"path": rel})
        message = f"{rel}: {request.content_length} bytes is over the limit of {limit}"
        return _error(request, 413, message, REASON_TOO_LARGE)
    if service.uploads >= service.options.max_uploads:
        message = f"{rel}: {service.uploads} uploads in progress, the most this head accepts"
        retry_after = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return _error(request, 503, message, REASON_BUSY, **retry_after)
    service.uploads += 1
    try:
        async with (
            service.writing(rel, worker_id) as trial_path,
            service.tree.upload(target, trial_path) as upload,
        ):
            return await _receive(request, upload, rel, service.options, mtime_ns)
    except OSError as exc:
        if exc.errno not in _CONFLICTS:
            raise
        return _error(request, 409, f"{rel}: conflicts with an existing file or directory")
    finally:
        service.uploads -= 1


async def _receive(
    request: web.Request, upload: TempFile, rel: str, options: ReceiverOptions, mtime_ns: int | None
) -> web.Response:
    """Stream the body into ``upload`` and commit it, or answer why not."""
    expected = request.content_length
    size = 0
    try:
        await _send_continue(request)
        buffer = bytearray()
        while True:
            async with asyncio.timeout(options.idle_timeout):
                chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > options.max_object_size:
                log.warning("upload over the size limit discarded", extra={"path": rel})
                message = f"{rel}: more than the limit of {options.max_object_size} bytes"
                # Close: the rest of the body is not wanted, and may be endless.
                return _closing(_error(request, 413, message, REASON_TOO_LARGE))
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                await upload.write(bytes(buffer))
                buffer.clear()
        if expected is not None and size != expected:
            log.warning("short upload discarded", extra={"path": rel, "bytes": size})
            message = f"{rel}: got {size} bytes, Content-Length said {expected}"
            return _closing(_error(request, 400, message))
        if buffer:
            await upload.write(bytes(buffer))
        await upload.commit(mtime_ns)
    except ConnectionResetError:
        # The client went away mid-body (aiohttp reports both a reset and an early EOF so).
        log.warning("interrupted upload discarded", extra={"path": rel, "bytes": size})
        return _closing(_error(request, 400, f"{rel}: connection lost after {size} bytes"))
    except TimeoutError:
        log.warning("stalled upload discarded", extra={"path": rel, "bytes": size})
        # Close: the rest of the body may never come, so the connection cannot be reused.
        message = f"{rel}: no data for {options.idle_timeout} s"
        return _closing(_error(request, 408, message))
    log.debug("object stored", extra={"path": rel, "bytes": size})
    return web.json_response({"size": size}, status=201)


async def _get(request: web.Request) -> web.StreamResponse:
    service = request.app[_SERVICE]
    _worker(request)
    rel = request.match_info["rel"]
    target = service.resolve(rel)
    if not await asyncio.to_thread(os.path.isfile, target):
        return _error(request, 404, f"{rel}: no such object")
    return web.FileResponse(target)


async def _list(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    _worker(request)
    prefix = request.query.get("prefix", "")
    base = service.resolve(prefix, allow_root=True)
    objects = await asyncio.to_thread(files.walk, base, prefix, service.state_dir)
    return web.json_response({"objects": objects})


async def _delete(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    rel = request.match_info["rel"]
    target = service.resolve(rel)
    worker_id = _worker(request)
    async with service.writing(rel, worker_id) as trial_path:
        try:
            await asyncio.to_thread(files.unlink, target)
        except IsADirectoryError:
            return _error(request, 409, f"{rel}: is a directory")
        await service.tree.prune(os.path.dirname(target), trial_path)
    log.debug("object deleted", extra={"path": rel})
    return web.Response(status=204)


def _mtime_header(request: web.Request) -> int | None:
    raw = request.headers.get(MTIME_HEADER)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadRequest(f"{MTIME_HEADER}: {raw!r} is not a non-negative integer")
    return value


# -- Expect: 100-continue ------------------------------------------------------------------


def _expects_continue(request: web.Request) -> bool:
    return request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"


def _awaits_continue(request: web.Request) -> bool:
    """The client sent ``Expect: 100-continue`` and no 100 Continue went out yet."""
    return _expects_continue(request) and not request.get(_CONTINUED, False)


async def _defer_continue(request: web.Request) -> None:
    """Instead of aiohttp's default (100 Continue at once): admission decides first."""
    if request.headers.get(hdrs.EXPECT, "").lower() not in ("", "100-continue"):
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers[hdrs.EXPECT]}")


async def _send_continue(request: web.Request) -> None:
    if _awaits_continue(request) and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request[_CONTINUED] = True


_CONFLICTS = (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY)
