"""The head-node service: worker sidecars sync trial dirs into the head pod's volume.

Seed scenario 3 (no upload dir). Every request but ``GET /healthz`` needs
``Authorization: Bearer <token>``. Objects are addressed by root-relative POSIX paths:

- ``PUT /v1/objects/{rel}``: the body, streamed to a temp file beside the target, fsynced
  and renamed over it, so a reader sees the old file or the whole new one, never a part.
  ``X-Trialsync-Mtime-Ns`` sets the file's mtime. 201 ``{"size": n}``.
- ``GET /v1/objects/{rel}``: the bytes; 404 if missing.
- ``GET /v1/objects?prefix=<rel>``: ``{"objects": {rel: {"size", "mtime"}}}`` for every
  regular file at or below ``prefix`` ("" = all); temp files are never listed.
- ``DELETE /v1/objects/{rel}``: 204, also when already missing.

A path that is empty, absolute, has ``..``/``.``/empty segments, a NUL or a backslash, or
resolves (through symlinks) outside the root is refused with 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from trialsync import status_server

log = logging.getLogger(__name__)

MTIME_HEADER = "X-Trialsync-Mtime-Ns"
# In-progress uploads are named ".<name>.trialsync-tmp-<random>"; listings skip them and a
# client may not address them.
TEMP_MARKER = ".trialsync-tmp-"
# Bytes gathered from the socket before one write to disk: bounds memory per upload while
# keeping thread hand-offs few.
WRITE_CHUNK = 1 << 20
# A client that sends nothing for this long is dropped and its temp file removed, so a
# stalled worker cannot hold a half-written file forever.
DEFAULT_IDLE_TIMEOUT = 60.0

_ROOT_KEY = web.AppKey("root", str)
_TOKEN_KEY = web.AppKey("token", bytes)
_IDLE_KEY = web.AppKey("idle_timeout", float)


class BadRequest(ValueError):
    """A request the receiver refuses with 400; the message names what is wrong."""


class PathError(BadRequest):
    """A request path that is malformed or could reach outside the root."""


def resolve(root: str, rel: str, *, allow_root: bool = False) -> str:
    """The absolute path of ``rel`` under the real path ``root``; PathError if it is unsafe.

    The returned path keeps ``rel``'s own last component (a symlink there is replaced by a
    PUT, not written through), but every symlink on the way must stay inside ``root``.
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
    if real != root and not real.startswith(root + os.sep):
        raise PathError(f"{rel!r}: resolves outside the root")
    return candidate


def make_app(root: str, token: str, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> web.Application:
    """The receiver for files under ``root``; ValueError if ``token`` is empty."""
    if not token:
        raise ValueError("the head receiver needs a non-empty token")
    os.makedirs(root, exist_ok=True)
    app = web.Application(middlewares=[_errors, _authenticate])
    app[_ROOT_KEY] = os.path.realpath(root)
    app[_TOKEN_KEY] = token.encode()
    app[_IDLE_KEY] = idle_timeout
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get("/v1/objects", _list),
            web.put("/v1/objects/{rel:.+}", _put),
            web.get("/v1/objects/{rel:.+}", _get),
            web.delete("/v1/objects/{rel:.+}", _delete),
        ]
    )
    return app


async def start(root: str, addr: str, token: str) -> tuple[web.AppRunner, int]:
    """Serve ``root`` on ``host:port`` (port 0 picks one); returns the runner and the port."""
    app = make_app(root, token)
    runner, bound = await status_server.serve(app, addr)
    log.info("head receiver listening", extra={"root": app[_ROOT_KEY], "port": bound})
    return runner, bound


# -- middlewares ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        log.warning("bad request", extra={"method": request.method, "reason": str(exc)})
        return _error(400, str(exc))


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), request.app[_TOKEN_KEY]
    ):
        log.warning(
            "unauthenticated request refused",
            extra={"method": request.method, "peer": request.remote},
        )
        return _error(
            401, "missing or wrong bearer token", **{"WWW-Authenticate": 'Bearer realm="trialsync"'}
        )
    return await handler(request)


# -- handlers ------------------------------------------------------------------------------


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _put(request: web.Request) -> web.Response:
    rel = request.match_info["rel"]
    target = resolve(request.app[_ROOT_KEY], rel)
    mtime_ns = _mtime_header(request)
    expected = request.content_length
    upload: _TempFile | None = None
    committed = False
    size = 0
    try:
        upload = await _TempFile.create(target)
        buffer = bytearray()
        while True:
            async with asyncio.timeout(request.app[_IDLE_KEY]):
                chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                await upload.write(bytes(buffer))
                buffer.clear()
        if expected is not None and size != expected:
            log.warning("short upload discarded", extra={"path": rel, "bytes": size})
            return _closing(_error(400, f"{rel}: got {size} bytes, Content-Length said {expected}"))
        if buffer:
            await upload.write(bytes(buffer))
        await upload.commit(mtime_ns)
        committed = True
    except ConnectionResetError:
        # The client went away mid-body (aiohttp reports both a reset and an early EOF so).
        log.warning("interrupted upload discarded", extra={"path": rel, "bytes": size})
        return _closing(_error(400, f"{rel}: connection lost after {size} bytes"))
    except TimeoutError:
        log.warning("stalled upload discarded", extra={"path": rel, "bytes": size})
        # Close: the rest of the body may never come, so the connection cannot be reused.
        return _closing(_error(408, f"{rel}: no data for {request.app[_IDLE_KEY]} s"))
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
            return _error(409, f"{rel}: conflicts with an existing file or directory")
        raise
    finally:
        if upload is not None and not committed:
            upload.discard()
    log.debug("object stored", extra={"path": rel, "bytes": size})
    return web.json_response({"size": size}, status=201)


async def _get(request: web.Request) -> web.StreamResponse:
    rel = request.match_info["rel"]
    target = resolve(request.app[_ROOT_KEY], rel)
    if not await asyncio.to_thread(os.path.isfile, target):
        return _error(404, f"{rel}: no such object")
    return web.FileResponse(target)


async def _list(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    base = resolve(request.app[_ROOT_KEY], prefix, allow_root=True)
    objects = await asyncio.to_thread(_walk, base, prefix)
    return web.json_response({"objects": objects})


async def _delete(request: web.Request) -> web.Response:
    rel = request.match_info["rel"]
    root = request.app[_ROOT_KEY]
    target = resolve(root, rel)
    try:
        await asyncio.to_thread(_remove, root, target)
    except IsADirectoryError:
        return _error(409, f"{rel}: is a directory")
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


# -- blocking file work (run in threads) ---------------------------------------------------


class _TempFile:
    """``.<name>.trialsync-tmp-<random>`` beside ``target``, renamed over it on commit.

    At most one blocking operation runs in a thread at a time; ``discard`` may be called
    at any moment (even while the handler is being cancelled) and removes the temp file
    once that operation is over, so no thread ever writes to a closed or reused fd.
    """

    def __init__(self, target: str, path: str, fd: int) -> None:
        self.target, self.path, self.fd = target, path, fd
        self._busy: asyncio.Future[Any] | None = None

    @classmethod
    async def create(cls, target: str) -> _TempFile:
        path, fd = await asyncio.to_thread(_open_temp, target)
        return cls(target, path, fd)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._busy = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        # shield: if this task is cancelled, _busy still completes and discard waits for it.
        return await asyncio.shield(self._busy)

    async def write(self, data: bytes) -> None:
        await self._run(_write_all, self.fd, data)

    async def commit(self, mtime_ns: int | None) -> None:
        fd, self.fd = self.fd, -1  # _commit closes it, whatever happens
        await self._run(_commit, fd, self.path, self.target, mtime_ns)

    def discard(self) -> None:
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: self.discard())
            return
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _open_temp(target: str) -> tuple[str, int]:
    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(3):
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f".{name}{TEMP_MARKER}{secrets.token_hex(8)}")
        try:
            return path, os.open(path, flags, 0o666)
        except FileNotFoundError:
            # A DELETE pruned the (empty) directory between makedirs and open; make it again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(fd: int, path: str, target: str, mtime_ns: int | None) -> None:
    """fsync, set the mtime, rename over ``target``, fsync the directory (rename durable)."""
    try:
        os.fsync(fd)
        if mtime_ns is not None:
            os.utime(fd, ns=(time.time_ns(), mtime_ns))
    finally:
        os.close(fd)
    try:
        os.replace(path, target)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    _fsync_dir(os.path.dirname(target))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk(base: str, prefix: str) -> dict[str, dict[str, float]]:
    """Regular files at or below ``base``, keyed ``prefix``-relative; symlinks skipped."""
    found: dict[str, dict[str, float]] = {}
    try:
        st = os.lstat(base)
    except (FileNotFoundError, NotADirectoryError):
        return found
    if stat.S_ISREG(st.st_mode):
        if TEMP_MARKER not in os.path.basename(base):
            found[prefix] = {"size": st.st_size, "mtime": st.st_mtime}
        return found
    stack = [(base, prefix)]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while walking
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel))
                elif entry.is_file(follow_symlinks=False) and TEMP_MARKER not in entry.name:
                    est = entry.stat(follow_symlinks=False)
                    found[rel] = {"size": est.st_size, "mtime": est.st_mtime}
            except FileNotFoundError:
                continue
    return found


def _remove(root: str, target: str) -> None:
    """Unlink ``target`` if present, then prune directories it leaves empty (not ``root``)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(target)
    # Empty dirs would look like checkpoints with no files to a restoring trainer.
    directory = os.path.dirname(target)
    while directory != root and directory.startswith(root + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            break
        directory = os.path.dirname(directory)
