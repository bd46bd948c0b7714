"""The sync engine: decides what to upload and uploads it, at a cost of O(changes).

The engine is fed changed paths by a change journal and keeps four pieces of state: the
ledger (what is uploaded), the dirty set (experiment and artifact files changed since their
last upload, of the kinds this sidecar syncs), the activity map (checkpoint dirs not yet
published, with the loop time of their last change) and the failed files (unreadable ones,
which wait for a change). It never walks the tree or lists the remote on a steady-state
sync.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Collection, Mapping

from trialsync import contract
from trialsync._engine import retention, scanner, transfer
from trialsync._engine.layout import MANIFEST_NAME, Kind, Layout, owner_marker
from trialsync._engine.ledger import Ledger
from trialsync._engine.sent_checkpoints import SentCheckpoints
from trialsync._stores.base import RemoteObject, Store
from trialsync._util import local_files, tasks
from trialsync._util.local_files import FileFailure, Stat
from trialsync.metrics import Metrics

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
    files_in_flight: int = contract.FILES_IN_FLIGHT.default
    upload_memory: int = contract.UPLOAD_MEMORY.default
    part_size: int = contract.PART_SIZE.default
    mirror_deletes: bool = False
    #: Keep the newest this many complete checkpoints of each trial in the store and
    #: delete older ones (manifest first); None keeps all.
    keep_checkpoints: int | None = None
    #: The owner key whose marker goes in every dir this engine uploads into (restore on
    #: start); None: no markers.
    owner_key: str | None = None


@dataclasses.dataclass
class Round:
    """The work of one sync run.

    ``checkpoints`` are published if they settled by the time the run starts, or if they
    are in ``complete``: the checkpoints a trigger declared complete, those pending when it
    arrived. ``explicit``: a trigger asked for this run. ``full`` syncs everything:
    settled checkpoints are published, the files of unsettled ones are uploaded without
    their manifest. ``maintenance``: mirrored deletions or a rescan are pending.
    """

    checkpoints: list[str] = dataclasses.field(default_factory=list)
    complete: frozenset[str] = frozenset()
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
        # Files that could not be read as scanned (path -> why), kept out of every round
        # until the journal reports a change to them (a chmod is one).
        self.failed: dict[str, str] = {}
        self.deleted_checkpoints: set[str] = set()
        #: Trial dirs whose remote checkpoints retention must look at (keep_checkpoints).
        self.retention_due: set[str] = set()
        #: Checkpoint dirs retention deleted (or would): a local copy is not published again.
        self.retired: set[str] = set()
        self.rescan_needed = False
        # The prefixes recover() listed; ledger.published is complete only inside them.
        self.listed: list[str] | None = None
        self.sent = SentCheckpoints(options.root) if options.mirror_deletes else None
        self.synced_kinds = frozenset(
            kind
            for kind, on in (
                (Kind.EXPERIMENT, options.sync_experiment),
                (Kind.ARTIFACT, options.sync_artifacts),
            )
            if on
        )
        self._gates = transfer.Gates(
            options.files_in_flight, options.upload_memory, options.part_size
        )
        self.marker = owner_marker(options.owner_key) if options.owner_key else None
        self.marked: set[str] = set()  # dirs known to hold the owner marker
        # Wall time of the last checkpoint published (or of the start): the data-loss window.
        self.last_durable = time.time()
        #: The newest checkpoint published, and the wall time it was (from its manifest
        #: after a restart): what GET /status reports.
        self.newest_published: tuple[str, float] | None = None
        #: Wall time each pending thing (a checkpoint dir, a changed file) first became
        #: unsynced; pruned of what is no longer pending by ``pending_times``.
        self.pending_since: dict[str, float] = {}

    # -- fed by the change journal -------------------------------------------------------

    def note_change(self, rel: str, is_dir: bool, removed: bool) -> None:
        """Record that ``rel`` changed; cheap, called for every inotify event."""
        if is_dir:
            checkpoint = self.layout.checkpoint_dir(rel)
            if checkpoint is None:
                return
            if removed:
                self.activity.pop(checkpoint, None)
                self._clear_failures(checkpoint)
                if self._mirrored(checkpoint):
                    self.deleted_checkpoints.add(checkpoint)
            elif checkpoint not in self.retired:
                self.activity[checkpoint] = _now()
                self.pending_since.setdefault(checkpoint, time.time())
            return
        placement = self.layout.place(rel)
        if placement is None:
            return
        if self.failed:
            self.failed.pop(rel, None)
        if placement.kind is Kind.CHECKPOINT:
            assert placement.checkpoint is not None
            if placement.checkpoint in self.retired:
                return
            if not removed or placement.checkpoint in self.activity:
                self.activity[placement.checkpoint] = _now()
                self.pending_since.setdefault(placement.checkpoint, time.time())
        elif placement.kind in self.synced_kinds:
            self.dirty.add(rel)
            self.pending_since.setdefault(rel, time.time())

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

    def unsynced_files(self) -> list[str]:
        """Changed files not uploaded yet (only kinds this sidecar syncs are kept dirty)."""
        return sorted(self.dirty)

    def pending_times(self) -> dict[str, float]:
        """{what is unsynced: the wall time it first became so}: pending checkpoints,
        changed files of the kinds this sidecar syncs, and unreadable files (by their
        checkpoint when they are in one). What is no longer pending is forgotten here."""
        pending = set(self.activity) | self.dirty
        for rel in self.failed:
            placement = self.layout.place(rel)
            pending.add(placement.checkpoint if placement and placement.checkpoint else rel)
        for key in [k for k in self.pending_since if k not in pending]:
            del self.pending_since[key]
        now = time.time()
        return {key: self.pending_since.setdefault(key, now) for key in pending}

    def _kind(self, rel: str) -> Kind | None:
        placement = self.layout.place(rel)
        return placement.kind if placement else None

    def _mirrored(self, checkpoint: str) -> bool:
        """Whether a local deletion of ``checkpoint`` must delete its remote copy."""
        return self.sent is not None and (
            checkpoint in self.ledger.published or checkpoint in self.sent
        )

    # -- start-up and reconcile ------------------------------------------------------------

    async def recover(self, settle: float) -> None:
        """Rebuild the ledger from one local walk, a listing of what the walk found, and the
        manifests of the published checkpoints that are here.

        Only the trial dirs present here are listed (see ``listing_scopes``), so a worker
        among hundreds does not page through every other worker's objects. The trust rule
        is ``Ledger.rebuild``'s.
        """
        await self.store.connect()
        local = await asyncio.to_thread(scanner.scan, self.options.root)
        scopes = listing_scopes(local, SCOPED_LISTINGS_MAX)
        remote = await self._list_scopes(scopes)
        self.listed = scopes
        published = {rel.rsplit("/", 1)[0] for rel in remote if rel.endswith("/" + MANIFEST_NAME)}
        if self.marker is not None:
            mark = "/" + self.marker
            self.marked |= {rel[: -len(mark)] for rel in remote if rel.endswith(mark)}
        in_scope: dict[str, Stat] = {}
        checkpoint_of: dict[str, str] = {}  # checkpoint file -> its checkpoint dir
        for rel, st in local.items():
            placement = self.layout.place(rel)
            if placement is not None:
                in_scope[rel] = st
                if placement.checkpoint is not None:
                    checkpoint_of[rel] = placement.checkpoint
        here = set(checkpoint_of.values())  # checkpoint dirs with files here
        manifests = await self._read_manifests(published & here)
        ledger = Ledger.rebuild(in_scope, remote, published, manifests, checkpoint_of.__contains__)
        # What the journal saw change is not current, whatever the listing suggests.
        ledger.forget(self.dirty)
        if self.activity:
            ledger.forget(rel for rel, c in checkpoint_of.items() if c in self.activity)
        self.ledger = ledger
        if self.options.keep_checkpoints is not None:
            self._recover_retention(remote, here - published)
        self._absorb_scan(in_scope, settle)
        if self.sent is not None:
            await self._recover_deletions(published & here, here)
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
                "deleted_checkpoints": len(self.deleted_checkpoints),
            },
        )

    def _recover_retention(self, remote: Mapping[str, RemoteObject], unpublished: set[str]) -> None:
        """With ``keep_checkpoints``: every listed trial dir is looked at in the next round
        (a deletion a kill interrupted is finished there), and local checkpoints that
        retention deleted, or would, are not published again."""
        keep = self.options.keep_checkpoints
        assert keep is not None
        trials = retention.checkpoints_of(remote, self._checkpoint_of)
        self.retention_due.update(trials)
        for checkpoint in unpublished:
            trial = checkpoint.rpartition("/")[0]
            kept = retention.plan(trials.get(trial, {}), keep).kept
            if retention.retired_below(checkpoint, kept, keep):
                self.retired.add(checkpoint)

    def _checkpoint_of(self, rel: str) -> str | None:
        placement = self.layout.place(rel)
        if placement is not None:
            return placement.checkpoint
        if rel.endswith("/" + MANIFEST_NAME):
            return self.layout.checkpoint_dir(rel.rpartition("/")[0])
        return None

    async def _recover_deletions(self, published_here: set[str], here: set[str]) -> None:
        """With ``--mirror-deletes``: queue the deletion of every checkpoint this volume
        sent that is gone, including those deleted while the sidecar was down."""
        assert self.sent is not None
        sent = self.sent
        await asyncio.to_thread(sent.load)
        # Published checkpoints present here are mirrored like those sent from here (the
        # rule before the record existed, and what Ray's num_to_keep expects).
        await asyncio.to_thread(sent.add, published_here)
        missing = sorted(sent.snapshot() - here)
        gone = await asyncio.to_thread(
            lambda: [c for c in missing if not os.path.isdir(self._local(c))]
        )
        self.deleted_checkpoints.update(gone)

    async def _read_manifests(self, checkpoints: set[str]) -> dict[str, Stat]:
        """{file path: (size, mtime_ns)} as the manifests of ``checkpoints`` list them; a
        manifest that is gone or unreadable lists nothing (its files are sent again)."""
        listed: dict[str, Stat] = {}
        newest = self.newest_published

        async def read(checkpoint: str) -> None:
            nonlocal newest
            manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
            try:
                data = await self.store.read_bytes(manifest_rel)
            except FileNotFoundError:
                return
            try:
                manifest = json.loads(data)
                files = manifest["files"]
                entries = {
                    f"{checkpoint}/{name}": (int(entry["size"]), int(entry["mtime_ns"]))
                    for name, entry in files.items()
                }
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning(
                    "unreadable manifest; the checkpoint is sent again",
                    extra={"path": manifest_rel, "error": repr(exc)},
                )
                return
            listed.update(entries)
            published_at = manifest.get("published_at")
            if isinstance(published_at, (int, float)) and (
                newest is None or published_at > newest[1]
            ):
                newest = (checkpoint, float(published_at))

        await tasks.bounded(LISTINGS_IN_FLIGHT, sorted(checkpoints), read)
        self.newest_published = newest
        return listed

    def _listed(self, checkpoint: str) -> bool:
        return self.listed is not None and any(
            not scope or checkpoint.startswith(scope + "/") for scope in self.listed
        )

    async def _list_scopes(self, scopes: list[str]) -> dict[str, RemoteObject]:
        remote: dict[str, RemoteObject] = {}

        async def one(prefix: str) -> None:
            remote.update(await self.store.list(prefix))

        await tasks.bounded(LISTINGS_IN_FLIGHT, scopes, one)
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
            elif not current and placement.kind in self.synced_kinds:
                self.dirty.add(rel)
                self.pending_since.setdefault(rel, now_wall)
        for checkpoint, mtime_ns in newest.items():
            self.pending_since.setdefault(checkpoint, now_wall)
            # A checkpoint untouched for the settle window is complete already; a change
            # the journal saw later than the file times wins.
            age = now_wall - mtime_ns / 1e9
            seen = now_loop - min(max(age, 0.0), settle)
            self.activity[checkpoint] = max(self.activity.get(checkpoint, seen), seen)
        for checkpoint in checkpoints - newest.keys() - self.ledger.published:
            self.activity.setdefault(checkpoint, now_loop - settle)
            self.pending_since.setdefault(checkpoint, now_wall)
        for checkpoint in self.retired & self.activity.keys():
            del self.activity[checkpoint]
            self.pending_since.pop(checkpoint, None)

    # -- running a round -------------------------------------------------------------------

    async def run(self, work: Round, settle: float) -> None:
        """Do one round; on failure or cancellation, everything not done stays pending.

        A file that cannot be read fails only its own checkpoint or artifact; a checkpoint
        deleted meanwhile is skipped. Only a failure of the store fails the round.
        """
        checkpoints = work.checkpoints
        if work.full or self.rescan_needed:
            self.rescan_needed = False
            local = await asyncio.to_thread(scanner.scan, self.options.root)
            self._absorb_scan(local, settle)
            if work.full:
                checkpoints = sorted(self.activity)
            else:  # the rescan may have found more, or newer, changes
                settled = self.settled_checkpoints(_now(), settle)
                checkpoints = sorted({*settled, *(work.complete & self.activity.keys())})
        now = _now()
        kinds = set(work.kinds)
        if work.full:
            kinds |= self.synced_kinds
        if self.deleted_checkpoints:
            await self._mirror_deletes()
        # Artifacts first: once a checkpoint's manifest is visible, so are the results
        # (result.json, progress.csv) the trial wrote up to it.
        if kinds:
            await self.sync_files(kinds)

        async def publish(checkpoint: str) -> None:
            last = self.activity.get(checkpoint, now - settle)
            settled = now - last >= settle
            # Complete since its settle window ended, or since this run started if a
            # trigger declared it complete sooner.
            since = min(last + settle, now)
            await self.publish(
                checkpoint, complete=checkpoint in work.complete or settled, complete_since=since
            )

        # Several at once: one checkpoint's verify listing and manifest write overlap
        # with the next one's uploads (the upload gates still bound the transfers).
        await tasks.bounded(CHECKPOINTS_IN_FLIGHT, checkpoints, publish)
        if self.retention_due:
            await self._retain()
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
            failures = await self._upload(todo, done)
            for rel, failure in failures.items():
                self._report(rel, failure)
                if failure.reason == local_files.UNREADABLE:
                    self.failed[rel] = failure.detail
                if failure.reason in (local_files.VANISHED, local_files.UNREADABLE):
                    done.add(rel)  # gone, or waiting for a change; the others go again
        finally:
            self.dirty |= batch - done
            for rel in done:
                self.pending_since.pop(rel, None)

    async def upload_now(self, rels: Collection[str]) -> dict[str, FileFailure]:
        """Upload ``rels`` (files, not checkpoints) now, whatever their kind, unless the
        ledger has them as they are; the files that could not be sent, by path. A file
        this uploads is no longer dirty: the next round does not send it again."""
        stats = await asyncio.to_thread(scanner.stat_files, self.options.root, set(rels))
        done: set[str] = set()
        todo: dict[str, Stat] = {}
        failures: dict[str, FileFailure] = {}
        for rel, st in stats.items():
            if st is None:
                failures[rel] = FileFailure(local_files.VANISHED, "no such file")
            elif self.ledger.is_current(rel, st):
                done.add(rel)
            else:
                todo[rel] = st
        failures.update(await self._upload(todo, done))
        self.dirty -= done
        for rel in done:
            self.pending_since.pop(rel, None)
        return failures

    async def publish(
        self, checkpoint: str, complete: bool = True, complete_since: float | None = None
    ) -> None:
        """Upload a checkpoint dir, verify it, then write its manifest (marker-last).

        With ``complete`` False only the files go up: they are safe, and the manifest
        waits until the checkpoint settles. Just before the manifest, the checkpoint is
        stat'ed again: unless every file has exactly the name, size and mtime that was
        uploaded, the manifest waits for the checkpoint to settle again. A checkpoint that
        is gone (deleted mid-upload) or empty is dropped; one with an unreadable file waits
        for a change to it. ``complete_since``: the loop time the checkpoint was complete
        (default: now), from which its publish latency is measured.
        """
        if checkpoint in self.retired:
            self.activity.pop(checkpoint, None)
            self.pending_since.pop(checkpoint, None)
            return
        started = _now()
        files = await self._scan_checkpoint(checkpoint)
        if not files:
            # Nothing to publish and nothing to wait for: a file written into it later is
            # a change the journal reports.
            await self._drop(checkpoint)
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
            await self.store.delete([manifest_rel])
        if todo and self.sent is not None and checkpoint not in self.sent:
            # Recorded before its first file goes up: a deletion is mirrored even if the
            # sidecar is killed right after.
            await asyncio.to_thread(self.sent.add, {checkpoint})
        failures = await self._upload(todo, set())
        if failures:
            await self._fail(checkpoint, failures)
            return
        if not complete:
            return
        if self.activity.get(checkpoint, started) > started:
            log.info(
                "checkpoint changed during upload; publishing later", extra={"path": checkpoint}
            )
            return
        entries = await self._verify(checkpoint, files, manifest_rel)
        # The journal may not have told of a change yet (events still queued in the kernel,
        # a poll not yet run, no journal in a final sync): the files themselves decide.
        if entries is None or not await self._unchanged(checkpoint, files):
            return
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
        self.pending_since.pop(checkpoint, None)
        if self.options.keep_checkpoints is not None:
            self.retention_due.add(checkpoint.rpartition("/")[0])
        self.last_durable = time.time()
        self.newest_published = (checkpoint, self.last_durable)
        self.metrics.checkpoints_published.inc()
        written = _now()
        self.metrics.publish_latency.observe(
            max(0.0, written - (started if complete_since is None else complete_since))
        )
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

    async def _scan_checkpoint(self, checkpoint: str) -> dict[str, Stat]:
        """The files of ``checkpoint`` with their (size, mtime_ns): one stat per file."""
        local = await asyncio.to_thread(scanner.scan, self.options.root, checkpoint)
        return {rel: st for rel, st in local.items() if self.layout.place(rel) is not None}

    async def _unchanged(self, checkpoint: str, uploaded: Mapping[str, Stat]) -> bool:
        """Whether ``checkpoint`` still has exactly the files, sizes and mtimes uploaded.

        If not, it waits for its settle window again (or is dropped if it is gone).
        """
        now = await self._scan_checkpoint(checkpoint)
        if now == uploaded:
            return True
        if not now:
            await self._drop(checkpoint)
            return False
        self.activity[checkpoint] = _now()
        log.info(
            "checkpoint changed after its upload began; publishing it once it settles",
            extra={"path": checkpoint},
        )
        return False

    async def _drop(self, checkpoint: str) -> None:
        """``checkpoint`` has no files: stop waiting for it; mirror its deletion if gone."""
        self.activity.pop(checkpoint, None)
        if self._mirrored(checkpoint) and not await asyncio.to_thread(
            os.path.isdir, self._local(checkpoint)
        ):
            self.deleted_checkpoints.add(checkpoint)
            log.info("checkpoint deleted before it was published", extra={"path": checkpoint})

    async def _fail(self, checkpoint: str, failures: dict[str, FileFailure]) -> None:
        """Files of ``checkpoint`` could not be sent: it is not published this time."""
        for rel, failure in failures.items():
            self._report(rel, failure)
        unreadable = {
            rel: f.detail for rel, f in failures.items() if f.reason == local_files.UNREADABLE
        }
        if unreadable:
            # Retried when one of its files changes (the journal reports a chmod), not in
            # every round.
            self.failed.update(unreadable)
            self.activity.pop(checkpoint, None)
        elif await asyncio.to_thread(os.path.isdir, self._local(checkpoint)):
            # Changed under the reader, or refused by the store: again once it settles.
            self.activity[checkpoint] = _now()
        else:
            await self._drop(checkpoint)

    def _report(self, rel: str, failure: FileFailure) -> None:
        self.metrics.file_failures.labels(failure.reason).inc()
        level = logging.INFO if failure.reason == local_files.VANISHED else logging.WARNING
        log.log(
            level,
            "file not uploaded",
            extra={"path": rel, "reason": failure.reason, "error": failure.detail},
        )

    def _clear_failures(self, checkpoint: str) -> None:
        if self.failed:
            inside = checkpoint + "/"
            for rel in [r for r in self.failed if r.startswith(inside)]:
                del self.failed[rel]

    async def _verify(
        self, checkpoint: str, files: dict[str, Stat], manifest_rel: str
    ) -> dict[str, dict[str, object]] | None:
        """Check every file against one listing; drop remote files the checkpoint lost.

        Returns the manifest's file entries, or None if a mismatch is explained by a local
        change. Raises PublishError on a missing or wrong-sized object.
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
                if not await self._unchanged(checkpoint, files):
                    return None
                got = "missing" if obj is None else f"{obj.size} bytes"
                # The store lost what it took (on the head node, the driver may delete a
                # checkpoint dir while it arrives): the retry uploads it again.
                self.ledger.forget([rel])
                raise PublishError(
                    f"{self.store.url(rel)}: expected {st[0]} bytes after upload, found {got}"
                )
            entries[rel[len(checkpoint) + 1 :]] = {
                "size": st[0],
                "mtime_ns": st[1],
                "checksum": obj.checksum,
            }
        return entries

    async def _upload(self, todo: dict[str, Stat], done: set[str]) -> dict[str, FileFailure]:
        """Upload ``todo``; record each file in the ledger and ``done`` as it lands; return
        the files that could not be read as scanned."""

        def uploaded(rel: str, st: Stat) -> None:
            self.ledger.record(rel, st)
            done.add(rel)
            if self.failed:
                self.failed.pop(rel, None)
            kind = self._kind(rel)
            label = kind.value if kind else "other"
            self.metrics.bytes_uploaded.labels(label).inc(st[0])
            self.metrics.files_uploaded.labels(label).inc()

        if self.marker is not None and todo:
            await self._mark(todo)
        return await transfer.upload_files(
            self.store, self.options.root, todo, self._gates, uploaded
        )

    async def _mark(self, rels: Collection[str]) -> None:
        """Put the owner marker in the dirs of ``rels`` that lack it, before their files:
        a restore with this key then finds every dir that has anything of this pod's."""
        assert self.marker is not None
        units: set[str] = set()
        for rel in rels:
            placement = self.layout.place(rel)
            unit = self.layout.unit_of(rel, placement) if placement else None
            if unit is not None and unit not in self.marked:
                units.add(unit)

        async def mark(unit: str) -> None:
            await self.store.put_bytes(f"{unit}/{self.marker}", b"")
            self.marked.add(unit)

        await tasks.bounded(LISTINGS_IN_FLIGHT, sorted(units), mark)

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
            if self.sent is not None and not remote:
                # Out of the record only once a listing finds nothing: an upload abandoned
                # at a timeout may still land after the deletion, and the next recover()
                # lists the checkpoints still recorded again.
                await asyncio.to_thread(self.sent.remove, checkpoint)
            if remote:
                log.info("checkpoint deletion mirrored", extra={"path": checkpoint})

    async def _retain(self) -> None:
        """Delete the remote checkpoints ``keep_checkpoints`` retires, in the trial dirs
        due, from one listing of each (``retention.plan``).

        Each retired checkpoint loses its manifest first, then its objects: a reader (a
        restore, a Tune restore) takes a checkpoint without a manifest as incomplete, so
        it never takes one that is half deleted. A kill between the two leaves objects
        without a manifest, which the next plan of the trial removes as orphans. Local
        files are never touched.
        """
        keep = self.options.keep_checkpoints
        assert keep is not None

        async def trial(unit: str) -> None:
            listing = await self.store.list(unit)
            grouped = retention.checkpoints_of(listing, self._checkpoint_of).get(unit, {})
            plan = retention.plan(grouped, keep, pending=self.activity.keys())
            for checkpoint in plan.retire:
                manifest_rel = f"{checkpoint}/{MANIFEST_NAME}"
                await self.store.delete([manifest_rel])
                self._retired(checkpoint)
                await self.store.delete(sorted(grouped[checkpoint] - {manifest_rel}))
                self.metrics.checkpoints_retired.inc()
                log.info("checkpoint retired", extra={"path": checkpoint, "kept": list(plan.kept)})
            for checkpoint in plan.orphans:
                await self.store.delete(sorted(grouped[checkpoint]))
                self._retired(checkpoint)
                log.info(
                    "orphan objects of a retired checkpoint removed", extra={"path": checkpoint}
                )
            self.retention_due.discard(unit)

        await tasks.bounded(LISTINGS_IN_FLIGHT, sorted(self.retention_due), trial)

    def _retired(self, checkpoint: str) -> None:
        self.ledger.forget_under(checkpoint)
        self.retired.add(checkpoint)
        self.activity.pop(checkpoint, None)
        self.pending_since.pop(checkpoint, None)

    def _local(self, rel: str) -> str:
        return os.path.join(self.options.root, rel)

    def _update_gauges(self) -> None:
        self.pending_times()  # forgets what is no longer pending
        self.metrics.pending_files.set(len(self.dirty))
        self.metrics.pending_checkpoints.set(len(self.activity))
        self.metrics.failed_files.set(len(self.failed))


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
