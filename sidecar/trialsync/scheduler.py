"""When to sync: the period, checkpoint completion, explicit triggers, timeouts and retries.

One loop runs at most one sync at a time. A request that arrives while a sync runs is
remembered and served by the next run (coalesced, never dropped). A run that exceeds
sync_timeout is cancelled and retried with exponential backoff; its work stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from trialsync.engine import Round, SyncEngine
from trialsync.layout import Kind
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
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    reconcile_interval: float | None = None


class Scheduler:
    def __init__(self, engine: SyncEngine, plan: Plan, metrics: Metrics) -> None:
        self.engine = engine
        self.plan = plan
        self.metrics = metrics
        self.ready = asyncio.Event()
        self.failures = 0
        self._wake = asyncio.Event()
        self._explicit = False
        self._recovered = False
        self._owed: frozenset[Kind] = frozenset()  # kinds of a failed run, retried next
        self._owed_explicit = False  # a failed run was triggered: its retry is too
        self._retry_at: float | None = None
        self._next_periodic = 0.0
        self._next_reconcile: float | None = None

    def wake(self) -> None:
        """Something changed on disk: re-evaluate what is due."""
        self._wake.set()

    def request_sync(self) -> None:
        """An explicit trigger (HTTP or signal): every pending checkpoint counts as complete."""
        self._explicit = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_periodic = loop.time()
        while True:
            if self._retry_at is None or loop.time() >= self._retry_at or self._explicit:
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
        explicit = self._explicit or self._owed_explicit
        self._explicit = False
        periodic = bool(self.plan.periodic_kinds) and (now >= self._next_periodic or explicit)
        if explicit:
            checkpoints = sorted(self.engine.activity)
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
        if self._explicit:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(deadlines) - loop.time()) if deadlines else None
        if delay == 0.0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

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
        except Exception as exc:
            self._failed("error", f"{type(exc).__name__}: {exc}", work)
            return False
        elapsed = loop.time() - started
        self.failures = 0
        self._retry_at = None
        self._owed = frozenset()
        self._owed_explicit = False
        self.metrics.syncs.labels("success").inc()
        self.metrics.duration.observe(elapsed)
        self.metrics.last_success.set(time.time())
        if work is not None:
            self.ready.set()
        return True

    def _failed(self, reason: str, message: str, work: Round | None) -> None:
        self.failures += 1
        delay = self.backoff()
        self._retry_at = asyncio.get_running_loop().time() + delay
        if work is not None:
            self._owed = work.kinds
            self._owed_explicit = work.explicit
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
        return float(min(self.plan.backoff_max, self.plan.backoff_base * 2 ** (self.failures - 1)))

    async def final_sync(self, within: float) -> bool:
        """Sync everything once (SIGTERM, --once) in ``within`` seconds; True if all is durable.

        Checkpoints still changing are uploaded at once and published when they settle,
        if that happens in time; one that does not settle keeps its files remote but gets
        no manifest, so no reader mistakes a half-written checkpoint for a complete one.
        Failed attempts are retried with backoff while the time allows.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    if not self._recovered:
                        await self.engine.recover(self.plan.settle)
                        self._recovered = True
                    await self.engine.run(Round(full=True), self.plan.settle)
            except TimeoutError:
                self._failed("timeout", f"final sync did not finish within {within}s", None)
                return False
            except Exception as exc:
                self._failed("error", f"{type(exc).__name__}: {exc}", None)
                if loop.time() + self.backoff() >= deadline:
                    return False
                await asyncio.sleep(self.backoff())
                continue
            settles_at = self.engine.next_settle_deadline(self.plan.settle)
            if settles_at is None:
                self.metrics.syncs.labels("success").inc()
                self.metrics.last_success.set(time.time())
                self.ready.set()
                return True
            if settles_at >= deadline:
                log.warning(
                    "checkpoints still changing at the final sync: uploaded, not published",
                    extra={"checkpoints": sorted(self.engine.activity)},
                )
                return False
            await asyncio.sleep(max(0.0, settles_at - loop.time()))
