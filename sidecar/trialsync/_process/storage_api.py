"""The trial volume and its store as one filesystem, for a trainer in the pod.

Ray asks its storage for files a trial on another pod wrote: the experiment's
``.validate_storage_marker``, and on ``Tuner.restore`` the experiment state and the
checkpoints. ``trialsync.ray``'s storage filesystem reads the trial volume first and asks
this API for the rest; it also asks it to publish a file at once (the marker the driver
writes, so that every trial finds it). Served on the sidecar's HTTP port to the pod alone
(localhost), paths relative to the sidecar's root:

- ``GET /v1/storage/stat?path=REL``: 200 ``{"type": "file", "size": N, "mtime": T}`` or
  ``{"type": "dir"}``, as the store has it; 404 if it has nothing there.

The store is read as any reader must read it: a checkpoint is there only once its
manifest is, so the files of one still being uploaded (or never finished) are not shown,
and neither are the manifests themselves. A restore never takes half a checkpoint.

- ``GET /v1/storage/list?prefix=REL``: 200 ``{"objects": {REL: {"size": N, "mtime": T}}}``,
  every object below REL.
- ``GET /v1/storage/object?path=REL``: 200 and the object's bytes; 404.
- ``POST /v1/storage/publish?path=REL``: 200 once the local file REL is in the store as it
  is now; 404 if there is no such local file.

docs/architecture.md, "Ray on Kubernetes", says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import stat as stat_mod
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from trialsync._engine.engine import SyncEngine
from trialsync._engine.layout import MANIFEST_NAME, Kind, Layout
from trialsync._engine.scanner import scan
from trialsync._stores.base import RemoteObject, Store
from trialsync._util.local_files import Stat

PREFIX = "/v1/storage"


class StorageView(Protocol):
    """What the API asks of the store behind the sidecar."""

    async def stat(self, rel: str) -> RemoteObject | None: ...

    async def list(self, prefix: str) -> dict[str, RemoteObject]: ...

    async def read(self, rel: str) -> bytes: ...

    async def publish(self, rel: str) -> None: ...


class StoreView:
    """A sidecar that syncs (to an upload dir, or to the head): its store, as published,
    and its engine to publish through (so the file is in the ledger, not sent again)."""

    def __init__(self, engine: SyncEngine, store: Store, layout: Layout) -> None:
        self._engine = engine
        self._store = store
        self._layout = layout

    async def stat(self, rel: str) -> RemoteObject | None:
        if not await self._readable(rel):
            return None
        return await self._store.stat(rel)

    async def list(self, prefix: str) -> dict[str, RemoteObject]:
        objects = await self._store.list(prefix)
        # A listing inside a checkpoint dir does not hold its manifest: ask for it.
        below = self._layout.place(f"{prefix}/x") if prefix else None
        if below is not None and below.kind is Kind.CHECKPOINT and below.checkpoint:
            manifest = f"{below.checkpoint}/{MANIFEST_NAME}"
            if manifest not in objects and await self._store.stat(manifest) is not None:
                objects = {**objects, manifest: RemoteObject(0, 0.0)}
        return published(objects, self._layout)

    async def read(self, rel: str) -> bytes:
        if not await self._readable(rel):
            raise FileNotFoundError(rel)
        return await self._store.read_bytes(rel)

    async def _readable(self, rel: str) -> bool:
        """Whether a reader may take the object ``rel``: not ours, and not part of a
        checkpoint without its manifest."""
        placement = self._layout.place(rel)
        if placement is None:
            return False
        if placement.kind is not Kind.CHECKPOINT or placement.checkpoint is None:
            return True
        return await self._store.stat(f"{placement.checkpoint}/{MANIFEST_NAME}") is not None

    async def publish(self, rel: str) -> None:
        failures = await self._engine.upload_now([rel])
        if rel in failures:
            raise FileNotFoundError(f"{rel}: {failures[rel].reason}: {failures[rel].detail}")


class LocalView:
    """The head that receives workers' trial dirs: its own volume is the store."""

    def __init__(self, root: str) -> None:
        self._root = root

    async def stat(self, rel: str) -> RemoteObject | None:
        return await asyncio.to_thread(_stat_file, os.path.join(self._root, rel))

    async def list(self, prefix: str) -> dict[str, RemoteObject]:
        found = await asyncio.to_thread(_scan, os.path.join(self._root, prefix))
        return {
            posixpath.join(prefix, rel) if prefix else rel: RemoteObject(size, mtime_ns / 1e9)
            for rel, (size, mtime_ns) in found.items()
        }

    async def read(self, rel: str) -> bytes:
        return await asyncio.to_thread(_read, os.path.join(self._root, rel))

    async def publish(self, rel: str) -> None:
        if await self.stat(rel) is None:
            raise FileNotFoundError(rel)  # else it is where it must be already


def published(objects: dict[str, RemoteObject], layout: Layout) -> dict[str, RemoteObject]:
    """``objects`` (root-relative keys) as a reader may take them: without manifests and
    the sidecar's own files, and without the files of checkpoints that have no manifest."""
    manifests = {key.rpartition("/")[0] for key in objects if key.endswith("/" + MANIFEST_NAME)}
    shown = {}
    for key, found in objects.items():
        placement = layout.place(key)
        if placement is None:
            continue
        if placement.kind is Kind.CHECKPOINT and placement.checkpoint not in manifests:
            continue
        shown[key] = found
    return shown


def _stat_file(path: str) -> RemoteObject | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return RemoteObject(st.st_size, st.st_mtime) if stat_mod.S_ISREG(st.st_mode) else None


def _scan(path: str) -> dict[str, Stat]:
    return scan(path) if os.path.isdir(path) else {}


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(view: StorageView, allowed: Callable[[web.Request], bool]) -> list[web.RouteDef]:
    """The API's routes; ``allowed(request)`` says whether the caller is the pod itself."""

    def guarded(handler: Handler) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            if not allowed(request):
                return web.Response(status=403, text="the storage API serves the pod alone\n")
            try:
                return await handler(request)
            except PathError as exc:
                return web.Response(status=400, text=f"{exc}\n")
            except FileNotFoundError:
                return web.Response(status=404, text="not found\n")

        return serve

    async def stat(request: web.Request) -> web.StreamResponse:
        rel = _rel(request, "path")
        found = await view.stat(rel) if rel else None
        if found is not None:
            return _json({"type": "file", "size": found.size, "mtime": found.mtime})
        if not rel or await view.list(rel):
            return _json({"type": "dir"})
        raise FileNotFoundError(rel)

    async def listing(request: web.Request) -> web.StreamResponse:
        found = await view.list(_rel(request, "prefix"))
        return _json(
            {"objects": {rel: {"size": o.size, "mtime": o.mtime} for rel, o in found.items()}}
        )

    async def read(request: web.Request) -> web.StreamResponse:
        return web.Response(body=await view.read(_rel(request, "path", file=True)))

    async def publish(request: web.Request) -> web.StreamResponse:
        await view.publish(_rel(request, "path", file=True))
        return web.Response(text="published\n")

    return [
        web.get(f"{PREFIX}/stat", guarded(stat)),
        web.get(f"{PREFIX}/list", guarded(listing)),
        web.get(f"{PREFIX}/object", guarded(read)),
        web.post(f"{PREFIX}/publish", guarded(publish)),
    ]


class PathError(ValueError):
    """A path the API does not take: absolute, or going up and out of the root."""


def _rel(request: web.Request, name: str, file: bool = False) -> str:
    """The query parameter ``name`` as a normal root-relative path ("" for the root)."""
    raw = request.query.get(name, "")
    rel = posixpath.normpath(raw) if raw else ""
    rel = "" if rel == "." else rel
    if raw.startswith("/") or rel == ".." or rel.startswith("../") or "\x00" in raw:
        raise PathError(f"{name} {raw!r} must be a path below the trial volume's root")
    if file and not rel:
        raise PathError(f"{name} must name a file")
    return rel


def _json(payload: object) -> web.Response:
    return web.Response(text=json.dumps(payload), content_type="application/json")
