"""The sync engine: decides what to upload and uploads it, at a cost of O(changes).

The engine is fed changed paths by a change journal and keeps three pieces of state: the
ledger (what is uploaded), the dirty set (experiment and artifact files changed since their
last upload) and the activity map (checkpoint dirs not yet published, with the loop time of
their last change). It never walks the tree or lists the remote on a steady-state sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Collection

from trialsync import scanner, tasks, transfer
from trialsync.layout import MANIFEST_NAME, Kind, Layout
from trialsync.ledger import Ledger, RemoteObject, Stat
from trialsync.metrics import Metrics
from trialsync.store import DEFAULT_PART_SIZE, Store

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
CHECKPOINTS_IN_FLIGHT = 8
# Past this many local trial dirs, recover() lists the whole upload dir once instead.
SCOPED_LISTINGS_MAX = 32
LISTINGS_IN_FLIGHT = 8


class PublishError(RuntimeError):
    """A checkpoint could not be verified after upload; it stays unpublished."""


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    root: str
    sync_artifacts: bool = True
    sync_experiment: bool = True  # experiment state is the head's (seed scenario 1)
    layout: Layout = dataclasses.field(default_factory=Layout)
    files_in_flight: int = 32
    upload_memory: int = transfer.DEFAULT_MEMORY
    part_size: int = DEFAULT_PART_SIZE
    mirror_deletes: bool = False


@dataclasses.dataclass
class Round:
    """The work of one sync run.

    ``checkpoints`` are published (they settled, or ``explicit``: a trigger said they are
    complete). ``full`` syncs everything: settled checkpoints are published, the files of
    unsettled ones are uploaded without their manifest. ``maintenance``: mirrored
    deletions or a rescan are pending.
    """

    checkpoints: list[str] = dataclasses.field(default_factory=list)
    kinds: frozenset[Kind] = frozenset()
    full: bool = False
    explicit: bool = False
    maintenance: bool = False

    def __bool__(self) -> bool:
        return bool(self.checkpoints or self.kinds or self.full or self.maintenance)


class SyncEngine:
    def __init__(self, options: EngineOptions, store: Store, metrics: Metrics) -> None:
        self.options = options
        self.store = store
        self.metrics = metrics
        self.layout = options.layout
        self.ledger = Ledger()
        self.dirty: set[str] = set()
        self.activity: dict[str, float] = {}
        self.deleted_checkpoints: set[str] = set()
        self.rescan_needed = False
        # The prefixes recover() listed; ledger.published is complete only inside them.
        self.listed: list[str] | None = None
        self._gates = transfer.Gates(
            options.files_in_flight, options.upload_memory, options.part_size
        )

    # -- fed by the change journal -------------------------------------------------------

    def note_change(self, rel: str, is_dir: bool, removed: bool) -> None:
        """Record that ``rel`` changed; cheap, called for every inotify event."""
        if is_dir:
            checkpoint = self.layout.checkpoint_dir(rel)
            if checkpoint is None:
                return
            if removed:
                self.activity.pop(checkpoint, None)
                if self.options.mirror_deletes and checkpoint in self.ledger.published:
                    self.deleted_checkpoints.add(checkpoint)
            else:
                self.activity[checkpoint] = _now()
            return
        placement = self.layout.place(rel)
        if placement is None:
            return
        if placement.kind is Kind.CHECKPOINT:
            assert placement.checkpoint is not None
            if not removed or placement.checkpoint in self.activity:
                self.activity[placement.checkpoint] = _now()
        else:
            self.dirty.add(rel)

    def note_overflow(self) -> None:
        self.rescan_needed = True

    # -- what is due -----------------------------------------------------------------------

    def settled_checkpoints(self, now: float, settle: float) -> list[str]:
        return sorted(c for c, last in self.activity.items() if now - last >= settle)

    def next_settle_deadline(self, settle: float) -> float | None:
        return min(self.activity.values()) + settle if self.activity else None

    @property
    def maintenance_due(self) -> bool:
        return self.rescan_needed or bool(self.deleted_checkpoints)

    def _kind(self, rel: str) -> Kind | None:
        placement = self.layout.place(rel)
        return placement.kind if placement else None

    # -- start-up and reconcile ------------------------------------------------------------

    async def recover(self, settle: float) -> None:
        """Rebuild the ledger from one local walk and a listing of what the walk found.

        Only the trial dirs present here are listed (see ``listing_scopes``), so a worker
        among hundreds does not page through every other worker's objects.
        """
        await self.store.connect()
        local = await asyncio.to_thread(scanner.scan, self.options.root)
        scopes = listing_scopes(local, SCOPED_LISTINGS_MAX)
        remote = await self._list_scopes(scopes)
        self.listed = scopes
        published = {rel.rsplit("/", 1)[0] for rel in remote if rel.endswith("/" + MANIFEST_NAME)}
        in_scope = {rel: st for rel, st in local.items() if self.layout.place(rel) is not None}
        ledger = Ledger.rebuild(in_scope, remote, published)
        # What the journal saw change is not current, whatever the listing suggests (S3
        # timestamps have one-second resolution).
        ledger.forget(self.dirty)
        if self.activity:
            ledger.forget(rel for rel in in_scope if self._checkpoint_of(rel) in self.activity)
        self.ledger = ledger
        self._absorb_scan(in_scope, settle)
        log.info(
            "ledger rebuilt",
            extra={
                "local_files": len(in_scope),
                "listed_prefixes": len(scopes),
                "remote_objects": len(remote),
                "uploaded": len(self.ledger),
                "published_checkpoints": len(published),
                "pending_files": len(self.dirty),
                "pending_checkpoints": len(self.activity),
            },
        )

    def _listed(self, checkpoint: str) -> bool:
        return self.listed is not None and any(
            not scope or checkpoint.startswith(scope + "/") for scope in self.listed
        )

    async def _list_scopes(self, scopes: list[str]) -> dict[str, RemoteObject]:
        remote: dict[str, RemoteObject] = {}
        gate = asyncio.Semaphore(LISTINGS_IN_FLIGHT)

        async def one(prefix: str) -> None:
            async with gate:
                remote.update(await self.store.list(prefix))

        await tasks.run_all([one(prefix) for prefix in scopes])
        return remote

    def _absorb_scan(self, local: dict[str, Stat], settle: float) -> None:
        """Mark what a local walk found that the ledger does not have as due (one pass)."""
        now_loop, now_wall = _now(), time.time()
        newest: dict[str, int] = {}  # checkpoint dir -> newest mtime among changed files
        checkpoints: set[str] = set()
        for rel, st in local.items():
            placement = self.layout.place(rel)
            if placement is None:
                continue
            current = self.ledger.is_current(rel, st)
            if placement.checkpoint is not None:
                checkpoints.add(placement.checkpoint)
                if not current:
                    newest[placement.checkpoint] = max(newest.get(placement.checkpoint, 0), st[1])
            elif not current:
                self.dirty.add(rel)
        for checkpoint, mtime_ns in newest.items():
            # A checkpoint untouched for the settle window is complete already; a change
            # the journal saw later than the file times wins.
            age = now_wall - mtime_ns / 1e9
            seen = now_loop - min(max(age, 0.0), settle)
            self.activity[checkpoint] = max(self.activity.get(checkpoint, seen), seen)
        for checkpoint in checkpoints - newest.keys() - self.ledger.published:
            self.activity.setdefault(checkpoint, now_loop - settle)

    def _checkpoint_of(self, rel: str) -> str | None:
        placement = self.layout.place(rel)
        return placement.checkpoint if placement else None

    # -- running a round -------------------------------------------------------------------

    async def run(self, work: Round, settle: float) -> None:
        """Do one round; on failure or cancellation, everything not done stays pending."""
        checkpoints = work.checkpoints
        if work.full or self.rescan_needed:
            self.rescan_needed = False
            local = await asyncio.to_thread(scanner.scan, self.options.root)
            self._absorb_scan(local, settle)
            if work.full:
                checkpoints = sorted(self.activity)
            elif not work.explicit:  # the rescan may have found more, or newer, changes
                checkpoints = self.settled_checkpoints(_now(), settle)
        now = _now()
        kinds = set(work.kinds)
        if work.full:
            if self.options.sync_experiment:
                kinds.add(Kind.EXPERIMENT)
            if self.options.sync_artifacts:
                kinds.add(Kind.ARTIFACT)
        if self.deleted_checkpoints:
            await self._mirror_deletes()
        # Artifacts first: once a checkpoint's manifest is visible, so are the results
        # (result.json, progress.csv) the trial wrote up to it.
        if kinds:
            await self.sync_files(kinds)
        gate = asyncio.Semaphore(CHECKPOINTS_IN_FLIGHT)

        async def publish(checkpoint: str) -> None:
            settled = now - self.activity.get(checkpoint, now - settle) >= settle
            async with gate:
                await self.publish(checkpoint, complete=work.explicit or settled)

        # Several at once: one checkpoint's verify listing and manifest write overlap
        # with the next one's uploads (the upload gates still bound the transfers).
        await tasks.run_all([publish(c) for c in checkpoints])
        self._update_gauges()

    async def sync_files(self, kinds: Collection[Kind]) -> None:
        """Upload dirty files of the given kinds that differ from the ledger."""
        batch = {rel for rel in self.dirty if self._kind(rel) in kinds}
        if not batch:
            return  # the steady state: no thread hop, no remote call
        self.dirty -= batch
        done: set[str] = set()
        try:
            stats = await asyncio.to_thread(scanner.stat_files, self.options.root, batch)
            todo: dict[str, Stat] = {}
            for rel, st in stats.items():
                if st is None or self.ledger.is_current(rel, st):
                    done.add(rel)
                else:
                    todo[rel] = st
            await self._upload(todo, done)
        finally:
            self.dirty |= batch - done

    async def publish(self, checkpoint: str, complete: bool = True) -> None:
        """Upload a checkpoint dir, verify it, then write its manifest (marker-last).

        With ``complete`` False only the files go up: they are safe, and the manifest
        waits until the checkpoint settles. A change seen during the upload postpones the
        manifest to a later run.
        """
        started = _now()
        local = await asyncio.to_thread(scanner.scan, self.options.root, checkpoint)
        files = {rel: st for rel, st in local.items() if self.layout.place(rel) is not None}
        if not files:
            if await asyncio.to_thread(os.path.isdir, self._local(checkpoint)):
                self.activity[checkpoint] = _now()  # empty: look again a settle window later
            else:
                self.activity.pop(checkpoint, None)
            return
        manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
        todo = {rel: st for rel, st in files.items() if not self.ledger.is_current(rel, st)}
        if checkpoint in self.ledger.published:
            if not todo:
                self.activity.pop(checkpoint, None)
                return
            # Changed after publishing: withdraw the marker first so no reader trusts a mix.
            await self.store.delete([manifest_rel])
            self.ledger.published.discard(checkpoint)
        elif not self._listed(checkpoint):
            # Its trial dir appeared after recover(): an earlier life of this checkpoint
            # (a restored trial) may have a manifest the ledger does not know. Withdraw it.
            with contextlib.suppress(FileNotFoundError):
                await self.store.delete([manifest_rel])
        await self._upload(todo, set())
        if not complete:
            return
        if self.activity.get(checkpoint, started) > started:
            log.info(
                "checkpoint changed during upload; publishing later", extra={"path": checkpoint}
            )
            return
        entries = await self._verify(checkpoint, files, manifest_rel)
        manifest = {
            "version": MANIFEST_VERSION,
            "checkpoint": checkpoint,
            "published_at": time.time(),
            "total_bytes": sum(st[0] for st in files.values()),
            "files": entries,
        }
        await self.store.put_bytes(manifest_rel, json.dumps(manifest, sort_keys=True).encode())
        self.ledger.published.add(checkpoint)
        self.activity.pop(checkpoint, None)
        self.metrics.checkpoints_published.inc()
        log.info(
            "checkpoint published",
            extra={
                "path": checkpoint,
                "url": self.store.url(checkpoint),
                "files": len(files),
                "bytes": manifest["total_bytes"],
                "seconds": round(_now() - started, 3),
            },
        )

    async def _verify(
        self, checkpoint: str, files: dict[str, Stat], manifest_rel: str
    ) -> dict[str, dict[str, object]]:
        """Check every file against one listing; drop remote files the checkpoint lost.

        Returns the manifest's file entries. Raises PublishError on a missing or
        wrong-sized object.
        """
        if not self.store.verifiable:
            return {
                rel[len(checkpoint) + 1 :]: {"size": st[0], "mtime_ns": st[1]}
                for rel, st in files.items()
            }
        remote = await self.store.list(checkpoint)
        # A checkpoint dir deleted and written again under the same name must not keep
        # files of its earlier life: Ray restores a checkpoint by downloading its prefix.
        inside = checkpoint + "/"
        stale = [r for r in remote if r.startswith(inside) and r not in files and r != manifest_rel]
        if stale:
            await self.store.delete(stale)
        entries: dict[str, dict[str, object]] = {}
        for rel, st in files.items():
            obj = remote.get(rel)
            if obj is None or obj.size != st[0]:
                got = "missing" if obj is None else f"{obj.size} bytes"
                raise PublishError(
                    f"{self.store.url(rel)}: expected {st[0]} bytes after upload, found {got}"
                )
            entries[rel[len(checkpoint) + 1 :]] = {
                "size": st[0],
                "mtime_ns": st[1],
                "checksum": obj.checksum,
            }
        return entries

    async def _upload(self, todo: dict[str, Stat], done: set[str]) -> None:
        """Upload ``todo``; record each file in the ledger and ``done`` as it lands."""

        def uploaded(rel: str, st: Stat) -> None:
            self.ledger.record(rel, st)
            done.add(rel)
            kind = self._kind(rel)
            label = kind.value if kind else "other"
            self.metrics.bytes_uploaded.labels(label).inc(st[0])
            self.metrics.files_uploaded.labels(label).inc()

        await transfer.upload_files(self.store, self.options.root, todo, self._gates, uploaded)

    async def _mirror_deletes(self) -> None:
        for checkpoint in sorted(self.deleted_checkpoints):
            remote = await self.store.list(checkpoint)
            manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
            # Marker first, so a reader never sees a published checkpoint losing files.
            if manifest_rel in remote:
                await self.store.delete([manifest_rel])
            await self.store.delete([rel for rel in remote if rel != manifest_rel])
            self.ledger.forget_under(checkpoint)
            self.deleted_checkpoints.discard(checkpoint)
            log.info("checkpoint deletion mirrored", extra={"path": checkpoint})

    def _local(self, rel: str) -> str:
        return os.path.join(self.options.root, rel)

    def _update_gauges(self) -> None:
        self.metrics.pending_files.set(len(self.dirty))
        self.metrics.pending_checkpoints.set(len(self.activity))


def listing_scopes(local: Collection[str], limit: int) -> list[str]:
    """The remote prefixes whose listing covers every path in ``local``.

    A file in a trial dir needs ``<experiment>/<trial>``, one directly in an experiment
    dir needs ``<experiment>``, one directly in the root needs everything (``""``). A
    prefix inside another listed one is dropped; more than ``limit`` prefixes become one
    listing of everything.
    """
    wanted: set[str] = set()
    for rel in local:
        parts = rel.split("/")
        wanted.add("/".join(parts[:2]) if len(parts) > 2 else "/".join(parts[:-1]))
    if "" in wanted:
        return [""]
    experiments = {prefix for prefix in wanted if "/" not in prefix}
    scopes = sorted(p for p in wanted if p in experiments or p.split("/")[0] not in experiments)
    return scopes if len(scopes) <= limit else [""]


def _now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
