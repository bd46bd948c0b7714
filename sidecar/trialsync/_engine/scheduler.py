"""When to sync: the period, checkpoint completion, explicit triggers, timeouts and retries.

One loop runs at most one sync at a time. A request that arrives while a sync runs is
remembered and served by the next run (coalesced, never dropped). A run that exceeds
sync_timeout is cancelled and retried with exponential backoff; its work stays pending.
A trigger completes the checkpoints pending when it arrived, and only those, however
much later the run that serves it starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from trialsync import contract
from trialsync._engine.engine import Round, SyncEngine
from trialsync._engine.layout import Kind
from trialsync._stores.base import ObjectRefused
from trialsync._util import backoff
from trialsync.metrics import Metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the seed asks of this sidecar, given its role and config.

    ``periodic_kinds``: file kinds synced every sync_period (scenario 1 on the head).
    ``checkpoint_kinds``: file kinds synced together with each checkpoint (scenario 4).
    ``defer_checkpoints``: completed checkpoints wait for the next periodic sync instead of
    forcing one (worker-to-head syncing with sync_on_checkpoint off, scenario 3).
    """

    period: float
    timeout: float
    settle: float
    periodic_kinds: frozenset[Kind] = frozenset()
    checkpoint_kinds: frozenset[Kind] = frozenset()
    defer_checkpoints: bool = False
    backoff_base: float = backoff.BASE
    backoff_max: float = contract.MAX_BACKOFF.default
    reconcile_interval: float | None = None


class Scheduler:
    def __init__(self, engine: SyncEngine, plan: Plan, metrics: Metrics) -> None:
        self.engine = engine
        self.plan = plan
        self.metrics = metrics
        self.ready = asyncio.Event()
        self.failures = 0
        self.failing = asyncio.Event()  # set from a failed sync to the next one that succeeds
        #: Wall times of the last successful sync, and of the first failure since (None
        #: while not failing); the reason of the last failure. GET /status reports them.
        self.last_success: float | None = None
        self.failing_since: float | None = None
        self.failure_reason: str | None = None
        self._wake = asyncio.Event()
        self._trigger = False  # a trigger arrived since the last run started
        self._triggered: set[str] = set()  # the checkpoints pending when triggers arrived
        self._recovered = False
        self._owed: frozenset[Kind] = frozenset()  # kinds of a failed run, retried next
        self._owed_explicit = False  # a failed run was triggered: its retry is too
        self._owed_complete: frozenset[str] = frozenset()  # and completes what it did
        self._final: asyncio.Timeout | None = None
        self._final_cut: float | None = None
        self._retry_at: float | None = None
        self._next_periodic = 0.0
        self._next_reconcile: float | None = None
        metrics.sync_timeout.set(plan.timeout)

    def wake(self) -> None:
        """Something changed on disk: re-evaluate what is due."""
        self._wake.set()

    def retry_now(self) -> None:
        """What the last sync failed on may be fixed (new credentials arrived): retry now,
        not when the backoff ends. Nothing if no retry is pending."""
        if self._retry_at is not None:
            self._retry_at = asyncio.get_running_loop().time()
            self._wake.set()

    def request_sync(self) -> None:
        """An explicit trigger (HTTP or signal): sync now, and the checkpoints pending at
        this moment count as complete.

        Only those: a checkpoint the trainer starts after the trigger waits for its settle
        window or a later trigger, also when the run serving this one starts later
        (coalesced behind a running sync, or a retry). The caller first brings the pending
        set up to date (``ChangeJournal.catch_up``).
        """
        self._triggered.update(self.engine.activity)
        self._trigger = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_periodic = loop.time()
        while True:
            if self._retry_at is None or loop.time() >= self._retry_at or self._trigger:
                now = loop.time()
                if not self._recovered or (
                    self._next_reconcile is not None and now >= self._next_reconcile
                ):
                    self._recovered = await self._guarded(self._recover)
                    if self._recovered and self.plan.reconcile_interval:
                        self._next_reconcile = loop.time() + self.plan.reconcile_interval
                    continue
                work = self._due(now)
                if work:
                    await self._guarded(
                        functools.partial(self.engine.run, work, self.plan.settle), work
                    )
                    continue
                self._retry_at = None
                self.ready.set()  # recovered and nothing is due: in sync
            await self._sleep_until_due()

    def _due(self, now: float) -> Round:
        explicit = self._trigger or self._owed_explicit
        # Triggered checkpoints published meanwhile are no longer pending.
        complete = (self._triggered | self._owed_complete) & self.engine.activity.keys()
        self._trigger = False
        self._triggered = set()
        periodic = bool(self.plan.periodic_kinds) and (now >= self._next_periodic or explicit)
        if explicit:
            settled = self.engine.settled_checkpoints(now, self.plan.settle)
            checkpoints = sorted({*settled, *complete})
        elif self.plan.defer_checkpoints and not periodic:
            checkpoints = []
        else:
            checkpoints = self.engine.settled_checkpoints(now, self.plan.settle)
        kinds = set(self._owed)
        if checkpoints or explicit:
            kinds |= self.plan.checkpoint_kinds
        if periodic:
            # sync_period is the minimum time between the starts of two periodic syncs.
            self._next_periodic = now + self.plan.period
            kinds |= self.plan.periodic_kinds
        return Round(
            checkpoints=checkpoints,
            complete=frozenset(complete),
            kinds=frozenset(kinds),
            explicit=explicit,
            maintenance=self.engine.maintenance_due,
        )

    async def _sleep_until_due(self) -> None:
        """Sleep until the next deadline, or until woken by a change or a trigger."""
        deadlines = []
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        else:
            if self.plan.periodic_kinds:
                deadlines.append(self._next_periodic)
            settle = self.engine.next_settle_deadline(self.plan.settle)
            if settle is not None and not self.plan.defer_checkpoints:
                deadlines.append(settle)
            if self._next_reconcile is not None:
                deadlines.append(self._next_reconcile)
        self._wake.clear()
        if self._trigger:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(deadlines) - loop.time()) if deadlines else None
        if delay == 0.0:
            return
        # A timer that sets the wake, not a timeout that cancels this task: in Python 3.11
        # asyncio.wait_for drops a cancel that arrives with the wake (SIGTERM while a file
        # grows), and asyncio.timeout turns a cancel left pending on the task into the
        # end of the scheduler.
        if delay is None:
            await self._wake.wait()
            return
        timer = loop.call_later(delay, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _recover(self) -> None:
        await self.engine.recover(self.plan.settle)

    async def _guarded(
        self, action: Callable[[], Awaitable[None]], work: Round | None = None
    ) -> bool:
        """Run one sync under sync_timeout; on failure count it and schedule a retry."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.plan.timeout):
                await action()
        except TimeoutError:
            self._failed("timeout", f"sync exceeded sync_timeout={self.plan.timeout}s", work)
            return False
        except PermissionError as exc:
            # The store refused the credentials (a refused object alone fails no sync).
            reason = "error" if isinstance(exc, ObjectRefused) else "credentials"
            self._failed(reason, f"{type(exc).__name__}: {exc}", work)
            return False
        except Exception as exc:
            self._failed("error", f"{type(exc).__name__}: {exc}", work)
            return False
        elapsed = loop.time() - started
        self.failures = 0
        self.failing.clear()
        self.failing_since = None
        self.last_success = time.time()
        self._retry_at = None
        self._owed = frozenset()
        self._owed_explicit = False
        self._owed_complete = frozenset()
        self.metrics.syncs.labels("success").inc()
        self.metrics.duration.observe(elapsed)
        self.metrics.last_success.set(self.last_success)
        self.metrics.failing_since.set(0)
        if work is not None:
            self.ready.set()
        return True

    def _failed(self, reason: str, message: str, work: Round | None) -> None:
        self.failures += 1
        if not self.failing.is_set():
            self.failing_since = time.time()
            self.metrics.failing_since.set(self.failing_since)
        self.failure_reason = reason
        self.failing.set()
        delay = self.backoff()
        self._retry_at = asyncio.get_running_loop().time() + delay
        if work is not None:
            self._owed = work.kinds
            self._owed_explicit = work.explicit
            self._owed_complete = work.complete
        self.metrics.syncs.labels("failure").inc()
        self.metrics.failures.labels(reason).inc()
        log.error(
            "sync failed; retrying with backoff",
            extra={
                "reason": reason,
                "error": message,
                "failures": self.failures,
                "retry_in": delay,
            },
        )

    def backoff(self) -> float:
        return backoff.delay(self.failures, self.plan.backoff_base, self.plan.backoff_max)

    async def final_sync(self, until: float) -> bool:
        """Sync everything (SIGTERM, --once) by loop time ``until``; True if all is durable.

        Checkpoints still changing are uploaded at once and published when they settle,
        if that happens in time; one that does not settle keeps its files remote but gets
        no manifest, so no reader mistakes a half-written checkpoint for a complete one.
        Failed attempts are retried with backoff while the time allows. An unreadable file
        makes the result False. ``cut_final_sync`` can bring ``until`` forward.
        """
        try:
            async with asyncio.timeout_at(until) as budget:
                self._final = budget
                if self._final_cut is not None:
                    self.cut_final_sync(self._final_cut)
                return await self._final_rounds(budget)
        except TimeoutError:
            self._failed("timeout", "the final sync ran out of time", None)
            self._log_unfinished()
            return False
        finally:
            self._final = None

    def cut_final_sync(self, until: float) -> None:
        """End the final sync (running or to come) by loop time ``until`` at the latest:
        SIGTERM during ``--once``."""
        self._final_cut = until if self._final_cut is None else min(self._final_cut, until)
        budget = self._final
        if budget is not None:
            when = budget.when()
            if when is None or when > until:
                budget.reschedule(until)

    async def _final_rounds(self, budget: asyncio.Timeout) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self._recovered:
                    await self.engine.recover(self.plan.settle)
                    self._recovered = True
                # Checkpoints a trigger declared complete are published without settling.
                complete = (self._triggered | self._owed_complete) & self.engine.activity.keys()
                await self.engine.run(
                    Round(full=True, complete=frozenset(complete)), self.plan.settle
                )
            except Exception as exc:
                self._failed("error", f"{type(exc).__name__}: {exc}", None)
                deadline = budget.when()
                if deadline is not None and loop.time() + self.backoff() >= deadline:
                    return False  # leave the rest of the budget to aborts and closing
                await asyncio.sleep(self.backoff())
                continue
            wake_at = self.engine.next_settle_deadline(self.plan.settle)
            if wake_at is None:
                if self.engine.failed:
                    log.error(
                        "final sync: files could not be read",
                        extra={"paths": sorted(self.engine.failed)},
                    )
                    return False
                if not self.engine.unsynced_files():
                    self.metrics.syncs.labels("success").inc()
                    self.last_success = time.time()
                    self.failing.clear()
                    self.failing_since = None
                    self.metrics.last_success.set(self.last_success)
                    self.metrics.failing_since.set(0)
                    self.ready.set()
                    return True
                # Files changed while they were read: once more, shortly.
                wake_at = loop.time() + min(self.plan.settle, 1.0)
            deadline = budget.when()
            if deadline is not None and wake_at >= deadline:
                self._log_unfinished()
                return False
            await asyncio.sleep(max(0.0, wake_at - loop.time()))

    def _log_unfinished(self) -> None:
        log.warning(
            "checkpoints still changing at the final sync: uploaded, not published",
            extra={
                "checkpoints": sorted(self.engine.activity),
                "files": self.engine.unsynced_files(),
            },
        )
