"""The sidecar process: wires store, engine, journal, scheduler and HTTP together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time

from trialsync._engine.engine import EngineOptions, SyncEngine
from trialsync._engine.layout import Kind
from trialsync._engine.restore import RestoreError, Restorer, Scope
from trialsync._engine.scheduler import Plan, Scheduler
from trialsync._engine.watcher import ChangeJournal, start_journal
from trialsync._head import receiver as head_receiver
from trialsync._head.store import HeadStore
from trialsync._process import credential_watch, status_server, storage_api, sync_status
from trialsync._process.settings import ConfigError, Settings
from trialsync._stores import aborts, credentials
from trialsync._stores.base import Store, ignore_request
from trialsync._util import backoff, tasks, throttle, tls
from trialsync.contract import Duty, Role
from trialsync.metrics import Metrics

log = logging.getLogger(__name__)


#: The part of the SIGTERM budget kept back from the final sync for aborts and closing:
#: this fraction of it, at most ``aborts.GRACE`` seconds.
ABORT_SHARE = 0.2


def abort_reserve(budget: float) -> float:
    """Seconds of a SIGTERM ``budget`` kept back from the final sync for aborts and closing."""
    return min(aborts.GRACE, budget * ABORT_SHARE)


def build_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """The store this sidecar syncs to. The fsspec store and the custom syncers are imported
    here, only for an upload dir: a worker that syncs to the head loads no storage client."""
    config = settings.config
    # One bucket for every upload of this sidecar (bandwidth_limit; 0: none).
    limiter = throttle.for_rate(settings.bandwidth_limit or 0)
    if settings.duty is Duty.SEND:
        assert settings.head_url is not None
        https = settings.head_url.startswith("https://")
        return HeadStore(
            settings.head_url,
            settings.head_token,
            identity_file=settings.head_identity_file,
            metrics=metrics,
            ssl_context=tls.client_context(settings.head_ca_file) if https else None,
            limiter=limiter,
        )
    assert config.upload_dir is not None
    from trialsync._stores.fsspec_store import RemoteStore
    from trialsync._stores.syncer_store import SyncerStore
    from trialsync.syncer import load_syncer

    if isinstance(config.syncer, str) and config.syncer != "auto":
        # A custom syncer reads the Secret's keys from its environment, as they are at
        # start (docs/architecture.md, "Credentials and rotation").
        credentials.MountedSecret(settings.credentials_dir).refresh()
        syncer = load_syncer(config.syncer, config.sync_period, config.sync_timeout)
        syncer.validate_upload_dir(config.upload_dir)
        return SyncerStore(syncer, config.upload_dir)
    return RemoteStore(
        config.upload_dir,
        settings.storage_options,
        part_size=settings.part_size,
        s3_botocore=settings.s3_client == "botocore",
        credentials_dir=settings.credentials_dir,
        on_request=metrics.count_request if metrics else ignore_request,
        limiter=limiter,
    )


def build_plan(settings: Settings) -> Plan:
    """The seed's scenarios for this role (docs/architecture.md, "The four scenarios")."""
    config = settings.config
    base = Plan(
        period=config.sync_period,
        timeout=config.sync_timeout,
        settle=settings.checkpoint_settle,
        backoff_max=settings.max_backoff,
        reconcile_interval=settings.reconcile_interval or None,
    )
    if settings.duty is Duty.SEND:  # scenario 3: the whole trial dir goes to the head node
        trial_dir = frozenset({Kind.ARTIFACT})
        return dataclasses.replace(
            base,
            periodic_kinds=trial_dir,
            checkpoint_kinds=trial_dir,
            defer_checkpoints=not config.sync_on_checkpoint,
        )
    artifacts = frozenset({Kind.ARTIFACT}) if config.sync_artifacts else frozenset()
    periodic: frozenset[Kind] = frozenset()
    if settings.role == Role.HEAD:
        periodic = frozenset({Kind.EXPERIMENT}) | artifacts  # scenario 1
    # Scenario 2 publishes each checkpoint when complete; scenario 4 rides with it.
    return dataclasses.replace(base, periodic_kinds=periodic, checkpoint_kinds=artifacts)


def receiver_options(settings: Settings) -> head_receiver.ReceiverOptions:
    """How the head serves workers (scenario 3), from its settings."""
    return head_receiver.ReceiverOptions(
        token=settings.head_token,
        state_dir=settings.receiver_state_dir,
        max_object_size=settings.receiver_max_object_size,
        max_uploads=settings.receiver_max_uploads,
        claim_lease=settings.receiver_claim_lease,
        tls=(
            tls.server_context(settings.receiver_cert_file, settings.receiver_key_file)
            if settings.receiver_cert_file and settings.receiver_key_file
            else None
        ),
    )


class Shutdown:
    """The time after SIGTERM, all of it within ``--final-sync-timeout`` seconds.

    The final sync may use the budget less a reserve (a fifth of it, at most
    ``aborts.GRACE`` seconds); in the reserve, the HTTP server stops (at most
    ``status_server.SHUTDOWN_TIMEOUT``), the multipart uploads the sync had to cancel are
    aborted and the store's connections closed. What is left after the budget is exiting,
    which takes well under a second.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.ends: float | None = None  # loop time; None until SIGTERM

    def begin(self) -> float:
        """SIGTERM arrived: the loop time by which the final sync must end."""
        if self.ends is None:
            self.ends = asyncio.get_running_loop().time() + self.budget
        return self.ends - abort_reserve(self.budget)

    async def close(self, store: Store) -> None:
        """Close ``store`` (it waits for pending aborts), by the end of the budget if
        SIGTERM came."""
        try:
            async with asyncio.timeout_at(self.ends):
                await store.close()
        except TimeoutError:
            log.warning(
                "out of time closing the store: %d upload aborts unfinished (a bucket "
                "lifecycle rule removes what they leave)",
                aborts.pending(),
            )


async def run(settings: Settings) -> int:
    """Run until SIGTERM (then a final sync), or once with ``--once``; the exit code."""
    if settings.share_files:
        # The trainer's uid is unknown (docs/architecture.md, "Ray on Kubernetes"): what
        # this process creates is open to every user, but for the files it keeps private
        # (0700 dirs, 0600 files, set explicitly).
        os.umask(0)
    if settings.create_root:
        try:
            os.makedirs(settings.root, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--root {settings.root!r} cannot be made: {exc}") from exc
    config = settings.config
    metrics = Metrics()
    if settings.duty in (Duty.RECEIVE, Duty.IDLE):
        if settings.restore:
            log.warning(
                "restore on start ignored: %s",
                "this head's volume is the store of its workers; nothing holds a copy of it"
                if settings.duty is Duty.RECEIVE
                else "syncing is disabled",
            )
        if settings.once:
            # Nothing of this sidecar's own to sync (syncer none, or the head-node service
            # that only receives): everything is durable at once.
            log.info(
                "sync once: nothing to sync without an upload dir", extra={"role": settings.role}
            )
            return 0
        await _serve_without_syncing(settings, metrics)
        return 0
    try:
        store = build_store(settings, metrics)
    except ValueError as exc:  # a custom syncer that cannot be loaded or refuses the URI
        raise ConfigError(str(exc)) from exc
    engine = SyncEngine(
        EngineOptions(
            root=settings.root,
            # Syncing to the head node carries the whole trial dir (scenario 3).
            sync_artifacts=config.sync_artifacts or settings.duty is Duty.SEND,
            sync_experiment=settings.role == Role.HEAD,
            layout=settings.layout,
            files_in_flight=settings.files_in_flight,
            upload_memory=settings.upload_memory,
            part_size=settings.part_size,
            mirror_deletes=settings.mirror_deletes,
            keep_checkpoints=settings.keep_checkpoints,
            owner_key=settings.restore_key,
        ),
        store,
        metrics,
    )
    metrics.data_loss_window.set_function(lambda: time.time() - engine.last_durable)
    scheduler = Scheduler(engine, build_plan(settings), metrics)
    shutdown = Shutdown(settings.final_sync_timeout)
    try:
        if settings.once:
            if settings.restore:
                log.warning("restore on start ignored with --once: it syncs what is there")
            ok = await _once(settings, scheduler, shutdown)
        else:
            ok = await _serve(settings, engine, scheduler, metrics, shutdown)
    except RestoreError as exc:
        log.error(str(exc))
        return 1
    finally:
        await shutdown.close(store)
    return 0 if ok else 1


def restorer_for(settings: Settings, store: Store, metrics: Metrics | None = None) -> Restorer:
    """The restore this sidecar makes at start: the trials of its owner key, or every
    trial below its restore prefix (the whole store when neither is given)."""
    scope = Scope(
        key=settings.restore_key or None,
        prefix=settings.restore_prefix or "",
        experiment_state=settings.role == Role.HEAD,
    )
    return Restorer(
        store,
        settings.root,
        settings.layout,
        scope,
        part_size=settings.part_size,
        # A part read whole (every store but S3 through the lean client, which writes
        # each chunk as it comes) is held until written: upload_memory in all, and the
        # small files' lane beside it (download.Gates, 32 MiB at most).
        parts_in_flight=settings.upload_memory // settings.part_size,
        on_bytes=metrics.restored_bytes.inc if metrics else lambda _: None,
    )


async def restore(
    settings: Settings,
    engine: SyncEngine,
    restorer: Restorer,
    metrics: Metrics,
    status: sync_status.Restoring | None = None,
) -> None:
    """Restore, retrying a failing store with backoff, within ``restore_timeout``;
    RestoreError when it cannot finish in time. ``status`` is kept failing from a failed
    attempt until the restore is done."""
    status = status or sync_status.Restoring()
    started = time.monotonic()
    attempt = 0
    try:
        async with asyncio.timeout(settings.restore_timeout):
            while True:
                attempt += 1
                try:
                    done = await restorer.run()
                    status.failing_since = None
                    break
                except Exception as exc:  # the store's failures are many kinds; all retried
                    if status.failing_since is None:
                        status.failing_since = time.time()
                    status.failure_reason = (
                        "credentials" if isinstance(exc, PermissionError) else "error"
                    )
                    wait = backoff.delay(attempt, backoff.BASE, settings.max_backoff, jitter=True)
                    log.warning(
                        "restore failed; retrying",
                        extra={"attempt": attempt, "error": repr(exc), "retry_in": round(wait, 2)},
                    )
                    await asyncio.sleep(wait)
    except TimeoutError:
        raise RestoreError(
            f"the restore did not finish within restore_timeout={settings.restore_timeout} s "
            f"({restorer.progress.describe()}, {attempt} attempts): the trainer is not "
            "started. Raise the SyncConfig's restoreTimeoutSeconds, or check the store "
            "(the warnings above say what failed)"
        ) from None
    seconds = time.monotonic() - started
    engine.marked |= done.units
    metrics.restored_files.inc(done.files)
    metrics.restore_seconds.set(seconds)
    log.info(
        "restore finished",
        extra={
            "units": len(done.units),
            "checkpoints": list(done.checkpoints),
            "files": done.files,
            "bytes": done.bytes,
            "seconds": round(seconds, 3),
        },
    )


async def _once(settings: Settings, scheduler: Scheduler, shutdown: Shutdown) -> bool:
    """``--once``: sync everything within sync_timeout; SIGTERM cuts it to the budget."""
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        log.info("SIGTERM: ending the sync", extra={"within": shutdown.budget})
        scheduler.cut_final_sync(shutdown.begin())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate)
    # A trainer that signals each checkpoint must not kill a --once run (SIGUSR1's default
    # action); there is nothing to trigger, everything is synced anyway.
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    ok = await scheduler.final_sync(loop.time() + settings.config.sync_timeout)
    log.info("sync once finished", extra={"durable": ok})
    return ok


async def _serve(
    settings: Settings,
    engine: SyncEngine,
    scheduler: Scheduler,
    metrics: Metrics,
    shutdown: Shutdown,
) -> bool:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    journal: ChangeJournal | None = None
    triggers: set[asyncio.Task[None]] = set()

    async def trigger() -> None:
        # The trainer wrote its checkpoint before it triggered: take in those changes, so
        # the trigger completes exactly the checkpoints that exist now.
        if journal is not None:
            await journal.catch_up()
        scheduler.request_sync()

    def on_signal_trigger() -> None:
        task = loop.create_task(trigger())
        triggers.add(task)
        task.add_done_callback(triggers.discard)

    def terminate() -> None:
        shutdown.begin()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate)
    loop.add_signal_handler(signal.SIGUSR1, on_signal_trigger)
    restorer = restorer_for(settings, engine.store, metrics) if settings.restore else None
    restoring = sync_status.Restoring() if restorer is not None else None

    def waiting() -> str:
        if restorer is not None and restorer.progress.phase != "done":
            return restorer.progress.describe()
        return "no successful sync yet"

    runner, port = await status_server.start(
        settings.http_addr,
        metrics,
        scheduler.ready.is_set,
        trigger,
        storage_api.StoreView(engine, engine.store, settings.layout),
        waiting,
        lambda: sync_status.report(settings.duty, engine, scheduler, restoring),
    )
    try:
        if restorer is not None:
            restoring_task = loop.create_task(
                restore(settings, engine, restorer, metrics, restoring)
            )
            stopped = loop.create_task(stop.wait())
            await asyncio.wait({restoring_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not restoring_task.done():
                # SIGTERM before the trainer ever ran: what is aside is removed next time.
                restoring_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await restoring_task
                log.info("SIGTERM during the restore: stopping")
                return True
            restoring_task.result()

        def on_change(rel: str, is_dir: bool, removed: bool) -> None:
            engine.note_change(rel, is_dir, removed)
            scheduler.wake()

        def on_overflow() -> None:
            engine.note_overflow()
            scheduler.wake()

        journal = await start_journal(settings.root, settings.poll_interval, on_change, on_overflow)
        log.info(
            "sidecar started",
            extra={
                "root": settings.root,
                "upload_dir": settings.config.upload_dir,
                "role": settings.role,
                "http_port": port,
                "sync_period": settings.config.sync_period,
                "sync_timeout": settings.config.sync_timeout,
            },
        )
        stopped = loop.create_task(stop.wait())
        rotation = loop.create_task(
            credential_watch.retry_on_new_credentials(settings.credentials_dir, scheduler)
        )

        def stray() -> None:
            metrics.failures.labels("cancelled").inc()
            log.warning(
                "a cancellation nobody asked for ended the scheduler (Python 3.11's asyncio "
                "can leave one pending on a task); the round it cut short is retried"
            )

        task = await tasks.keep_running(scheduler.run, stopped, stray)
        if task.done():
            stopped.cancel()
            rotation.cancel()
            task.result()  # the scheduler never returns on its own; surface its error
        until = shutdown.begin()
        task.cancel()
        rotation.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The journal stays open: a checkpoint that changes during the final sync must
        # not be published from what it was before.
        log.info("SIGTERM: final sync of everything", extra={"within": shutdown.budget})
        ok = await scheduler.final_sync(until)
        log.info("final sync finished", extra={"durable": ok})
        return ok
    finally:
        if journal is not None:
            journal.close()
        await runner.cleanup()


async def _serve_without_syncing(settings: Settings, metrics: Metrics) -> None:
    """The head without an upload dir receives workers' trial dirs; syncer=none idles."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    local = storage_api.LocalView(settings.root) if settings.duty is Duty.RECEIVE else None
    runner, _ = await status_server.start(
        settings.http_addr,
        metrics,
        lambda: True,
        _no_sync,
        local,
        status=lambda: sync_status.idle_report(settings.duty),
    )
    receiver = None
    if settings.duty is Duty.IDLE:
        log.info("syncing disabled (syncer=none and no upload dir); idling")
    else:
        receiver, port = await head_receiver.start(
            settings.root, settings.receiver_addr, receiver_options(settings)
        )
        log.info("head-node service started", extra={"root": settings.root, "port": port})
    await stop.wait()
    if receiver is not None:
        await receiver.cleanup()
    await runner.cleanup()


async def _no_sync() -> None:
    """POST /sync where nothing syncs."""
