"""Restore on start: put a pod's trials back on its fresh volume before the trainer runs.

What a pod owns is a set of *units*: trial dirs (Train V2's run dirs), and for the head
the experiment dirs whose state it syncs. A sidecar with an owner key leaves an owner
marker (``layout.owner_marker``) in every unit it uploads into; a restore with that key
takes the units that hold its marker. With a prefix instead, every unit at or below it.

Of each unit it restores the files that are not in a checkpoint (a trial's results,
params, ...; for the head, the experiment state) and the newest *complete* checkpoint:
its manifest is present, and every file the manifest lists is in the store with the
listed size, and the listed checksum where the store gives one. A checkpoint without its
manifest, or with a file that does not match, is passed over for the one before it.

Everything is written aside (``layout.RESTORING_PREFIX``) and renamed into place: a
checkpoint dir whole, so a trainer never finds a half checkpoint, however the restore
process was interrupted. The next restore removes what an interrupted one left aside.
Nothing is fsync'ed (a restore's bytes are in the store, and a fresh emptyDir dies with
its node): where the volume outlives a crashed node, a restored checkpoint whose writes
never reached the disk is shorter than its manifest (ext4 and XFS keep a file's size
with its data), and the next restore finds it so and restores it again.
Files get the mtimes the store has (a checkpoint's from its manifest), so the ledger
rebuilt after the restore holds them as uploaded: they are not sent again. Nothing that
exists locally is overwritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor

from trialsync._engine import download
from trialsync._engine.layout import (
    MANIFEST_NAME,
    RESTORING_PREFIX,
    Kind,
    Layout,
    owner_marker,
)
from trialsync._stores.base import RemoteObject, Store
from trialsync._util import tasks

log = logging.getLogger(__name__)

FILES_IN_FLIGHT = 64
#: Threads for the blocking calls of a restore: renames, and writes of parts read whole.
BLOCKING_THREADS = 32
CHECKPOINTS_IN_FLIGHT = 4
MANIFESTS_IN_FLIGHT = 8
PROGRESS_LOG_INTERVAL = 5.0


@dataclasses.dataclass(frozen=True)
class Scope:
    """What this pod owns: the units with ``key``'s marker, or (no key) every unit at or
    below ``prefix`` ("" is all). ``experiment_state``: the head also restores the files
    directly in its experiment dirs."""

    key: str | None = None
    prefix: str = ""
    experiment_state: bool = False


@dataclasses.dataclass
class Unit:
    """One unit's objects as listed: its files outside checkpoints, and its checkpoints'
    files by checkpoint dir."""

    files: dict[str, RemoteObject] = dataclasses.field(default_factory=dict)
    checkpoints: dict[str, dict[str, RemoteObject]] = dataclasses.field(default_factory=dict)

    def newest_first(self) -> list[str]:
        return sorted(self.checkpoints, key=_natural, reverse=True)


@dataclasses.dataclass
class Progress:
    """What the restore has done so far; ``/readyz`` and the logs show it."""

    phase: str = "listing"
    files: int = 0
    bytes: int = 0
    files_done: int = 0
    bytes_done: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def describe(self) -> str:
        seconds = time.monotonic() - self.started
        if self.phase == "listing":
            return f"restoring: choosing what to restore ({seconds:.0f} s)"
        return (
            f"restoring: {self.files_done}/{self.files} files, {_mib(self.bytes_done)} of "
            f"{_mib(self.bytes)} MiB ({seconds:.0f} s)"
        )


@dataclasses.dataclass(frozen=True)
class Restored:
    units: frozenset[str]
    checkpoints: tuple[str, ...]
    files: int
    bytes: int


class RestoreError(RuntimeError):
    """The restore cannot finish; the message says why and what to do."""


def owned_units(
    remote: Mapping[str, RemoteObject], layout: Layout, scope: Scope
) -> dict[str, Unit]:
    """The units ``scope`` owns in a listing of the store, with their objects."""
    marker = owner_marker(scope.key) if scope.key else None
    units: dict[str, Unit] = {}
    marked: set[str] = set()
    for rel, found in remote.items():
        if not _safe(rel):
            log.warning("not restored: an unsafe object name", extra={"path": rel})
            continue
        parent, _, name = rel.rpartition("/")
        if marker is not None and name == marker:
            marked.add(parent)
            continue
        if name == MANIFEST_NAME and layout.checkpoint_dir(parent) is not None:
            # A manifest is listed with its checkpoint's files (it is not one to restore).
            unit = units.setdefault(_parent(parent), Unit())
            unit.checkpoints.setdefault(parent, {})[rel] = found
            continue
        placement = layout.place(rel)
        if placement is None:
            continue
        unit_name = layout.unit_of(rel, placement)
        if unit_name is None:
            continue
        if placement.kind is Kind.EXPERIMENT and not scope.experiment_state:
            continue
        unit = units.setdefault(unit_name, Unit())
        if placement.checkpoint is not None:
            unit.checkpoints.setdefault(placement.checkpoint, {})[rel] = found
        else:
            unit.files[rel] = found
    if marker is not None:
        return {name: unit for name, unit in units.items() if name in marked}
    prefix = scope.prefix
    return {
        name: unit
        for name, unit in units.items()
        if not prefix or name == prefix or name.startswith(prefix + "/")
    }


def complete_files(
    checkpoint: str, manifest: bytes, listed: Mapping[str, RemoteObject]
) -> dict[str, tuple[int, int]] | str:
    """The files of ``checkpoint`` to restore, path -> (size, mtime_ns) as its manifest
    lists them; or why it is not complete."""
    try:
        entries = json.loads(manifest)["files"]
        files = {
            f"{checkpoint}/{name}": (int(e["size"]), int(e["mtime_ns"]), e.get("checksum"))
            for name, e in entries.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its manifest is unreadable ({exc!r})"
    for rel, (size, _, checksum) in files.items():
        if not _safe(rel):
            return f"its manifest names an unsafe path {rel!r}"
        found = listed.get(rel)
        if found is None:
            return f"{rel} is missing"
        if found.size != size:
            return f"{rel} has {found.size} bytes, its manifest says {size}"
        if checksum and found.checksum and checksum != found.checksum:
            return f"{rel} has checksum {found.checksum}, its manifest says {checksum}"
    return {rel: (size, mtime_ns) for rel, (size, mtime_ns, _) in files.items()}


class Restorer:
    """Restores ``scope`` from ``store`` into ``root``."""

    def __init__(
        self,
        store: Store,
        root: str,
        layout: Layout,
        scope: Scope,
        part_size: int,
        parts_in_flight: int,
        on_bytes: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.root = root
        self.layout = layout
        self.scope = scope
        self.part_size = part_size
        self.progress = Progress()
        self._gates = download.Gates(parts_in_flight)
        self._on_bytes = on_bytes
        self._pool: Executor | None = None

    async def run(self) -> Restored:
        """One attempt; what is already in place is skipped, so it can be run again."""
        self.progress = Progress()
        await self.store.connect()
        remote = await self.store.list(self.scope.prefix)
        units = owned_units(remote, self.layout, self.scope)
        await asyncio.to_thread(self._clean_leftovers, units)
        listed = {rel: found for unit in units.values() for rel, found in unit.files.items()}
        missing = await asyncio.to_thread(self._missing, listed)
        files = {  # path -> (size, mtime_ns)
            rel: (found.size, None if found.mtime is None else int(found.mtime * 1e9))
            for rel, found in listed.items()
            if rel in missing
        }
        checkpoints: dict[str, dict[str, tuple[int, int]]] = {}

        async def choose(name: str) -> None:
            chosen = await self._newest_complete(name, units[name])
            if chosen is not None:
                checkpoints[chosen[0]] = chosen[1]

        # One manifest read per trial: many at once, not one trial after the other.
        await tasks.bounded(MANIFESTS_IN_FLIGHT, sorted(units), choose)
        self.progress.phase = "downloading"
        self.progress.files = len(files) + sum(len(c) for c in checkpoints.values())
        self.progress.bytes = sum(s for s, _ in files.values()) + sum(
            s for c in checkpoints.values() for s, _ in c.values()
        )
        log.info(
            "restoring",
            extra={
                "units": len(units),
                "checkpoints": sorted(checkpoints),
                "files": self.progress.files,
                "bytes": self.progress.bytes,
            },
        )
        reporter = asyncio.create_task(self._report())
        # Renames and the writes of parts read whole block: threads of their own.
        self._pool = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="restore")
        try:
            await tasks.run_all(
                [
                    tasks.bounded(
                        FILES_IN_FLIGHT, sorted(files), lambda rel: self._file(rel, files)
                    ),
                    tasks.bounded(
                        CHECKPOINTS_IN_FLIGHT,
                        sorted(checkpoints),
                        lambda c: self._checkpoint(c, checkpoints[c]),
                    ),
                ]
            )
        finally:
            reporter.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.progress.phase = "done"
        return Restored(
            frozenset(units), tuple(sorted(checkpoints)), self.progress.files, self.progress.bytes
        )

    async def _newest_complete(
        self, unit_name: str, unit: Unit
    ) -> tuple[str, dict[str, tuple[int, int]]] | None:
        """The newest complete checkpoint of ``unit``, unless the volume has it whole (or
        has a newer one)."""
        for checkpoint in unit.newest_first():
            local = self._local(checkpoint)
            here = await asyncio.to_thread(os.path.isdir, local)
            chosen = await self._complete(checkpoint, unit.checkpoints[checkpoint])
            if isinstance(chosen, str):
                if here:
                    return None  # the volume's own, newer than anything published
                log.warning(
                    "checkpoint not restored: it is not complete",
                    extra={"path": checkpoint, "reason": chosen},
                )
                continue
            if here:
                if not await asyncio.to_thread(_torn, local, checkpoint, chosen):
                    return None
                # Shorter than published: a restore whose writes never reached the disk
                # (the node went down). The store holds it whole.
                log.warning(
                    "checkpoint in the volume is shorter than its manifest; restored again",
                    extra={"path": checkpoint},
                )
                await asyncio.to_thread(shutil.rmtree, local)
            return checkpoint, chosen
        if unit.checkpoints:
            log.warning("no complete checkpoint to restore", extra={"path": unit_name})
        return None

    async def _complete(
        self, checkpoint: str, listed: Mapping[str, RemoteObject]
    ) -> dict[str, tuple[int, int]] | str:
        manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
        if manifest_rel not in listed:
            return "it has no manifest (never published whole)"
        try:
            manifest = await self.store.read_bytes(manifest_rel)
        except FileNotFoundError:
            return "its manifest is gone"
        return complete_files(checkpoint, manifest, listed)

    async def _file(self, rel: str, files: Mapping[str, tuple[int, int | None]]) -> None:
        size, mtime_ns = files[rel]
        final = self._local(rel)
        temp = _aside(final)
        await self._blocking(_make_dirs, [os.path.dirname(final)])
        await self._fetch(rel, temp, size, mtime_ns)
        await self._blocking(_rename_new, temp, final)

    async def _checkpoint(self, checkpoint: str, files: Mapping[str, tuple[int, int]]) -> None:
        final = self._local(checkpoint)
        temp = _aside(final)
        paths = {rel: os.path.join(temp, *rel[len(checkpoint) + 1 :].split("/")) for rel in files}
        await self._blocking(_make_dirs, [temp, *{os.path.dirname(p) for p in paths.values()}])

        async def one(rel: str) -> None:
            await self._fetch(rel, paths[rel], *files[rel])

        await tasks.bounded(FILES_IN_FLIGHT, sorted(files), one)
        await self._blocking(_rename_new, temp, final)
        log.info(
            "checkpoint restored",
            extra={
                "path": checkpoint,
                "files": len(files),
                "bytes": sum(s for s, _ in files.values()),
            },
        )

    async def _fetch(self, rel: str, path: str, size: int, mtime_ns: int | None) -> None:
        def progress(count: int) -> None:
            self.progress.bytes_done += count
            self._on_bytes(count)

        await download.fetch(
            self.store, rel, path, size, self.part_size, self._gates, progress, self._pool, mtime_ns
        )
        self.progress.files_done += 1

    async def _blocking(self, call: Callable[..., None], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_LOG_INTERVAL)
            log.info(self.progress.describe())

    def _missing(self, listed: Mapping[str, RemoteObject]) -> set[str]:
        """The paths of ``listed`` the volume has nothing at (blocking)."""
        return {rel for rel in listed if not os.path.lexists(self._local(rel))}

    def _clean_leftovers(self, units: Mapping[str, Unit]) -> None:
        """Remove what an interrupted restore left aside in the units' dirs."""
        dirs = {self._local(name) for name in units}
        dirs |= {os.path.dirname(d) for d in dirs}
        for directory in dirs:
            try:
                entries = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.startswith(RESTORING_PREFIX):
                    path = os.path.join(directory, entry)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)

    def _local(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))


def _make_dirs(paths: list[str]) -> None:
    for path in paths:
        os.makedirs(path, exist_ok=True)


def _aside(final: str) -> str:
    head, name = os.path.split(final)
    return os.path.join(head, RESTORING_PREFIX + name)


def _rename_new(temp: str, final: str) -> None:
    """Move ``temp`` into place unless ``final`` exists (then drop it)."""
    if os.path.lexists(final):
        if os.path.isdir(temp):
            shutil.rmtree(temp)
        else:
            os.unlink(temp)
        return
    os.rename(temp, final)


def _torn(local: str, checkpoint: str, files: Mapping[str, tuple[int, int]]) -> bool:
    """Whether the checkpoint dir ``local`` lacks a file of ``files`` or has one shorter."""
    for rel, (size, _) in files.items():
        try:
            if os.stat(os.path.join(local, *rel[len(checkpoint) + 1 :].split("/"))).st_size < size:
                return True
        except FileNotFoundError:
            return True
    return False


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _safe(rel: str) -> bool:
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _natural(name: str) -> list[object]:
    """A sort key that orders ``checkpoint_9`` before ``checkpoint_10``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f}"
