"""When syncs run: period, settle window, timeout, backoff, coalescing — on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from trialsync._engine.engine import Round
from trialsync._engine.layout import Kind
from trialsync._engine.scheduler import Plan, Scheduler
from trialsync.metrics import Metrics

pytestmark = pytest.mark.looptime


class FakeEngine:
    """Records when each round starts; can be told to hang or fail (pure scheduling logic)."""

    def __init__(self) -> None:
        self.activity: dict[str, float] = {}
        self.maintenance_due = False
        self.runs: list[tuple[float, Round]] = []
        self.cancelled: list[float] = []
        self.hang_next = 0
        self.fail_next = 0
        self.duration = 0.0
        self.failed: dict[str, str] = {}
        self.unsynced: list[str] = []

    def settled_checkpoints(self, now: float, settle: float) -> list[str]:
        return sorted(c for c, t in self.activity.items() if now - t >= settle)

    def next_settle_deadline(self, settle: float) -> float | None:
        return min(self.activity.values()) + settle if self.activity else None

    async def recover(self, settle: float) -> None:
        pass

    def unsynced_files(self) -> list[str]:
        return self.unsynced

    async def run(self, work: Round, settle: float) -> None:
        loop = asyncio.get_running_loop()
        self.runs.append((loop.time(), work))
        if self.hang_next:
            self.hang_next -= 1
            try:
                await asyncio.sleep(10**9)
            except asyncio.CancelledError:
                self.cancelled.append(loop.time())
                raise
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("store unavailable")
        await asyncio.sleep(self.duration)
        for checkpoint in work.checkpoints:
            if checkpoint in work.complete or loop.time() - self.activity[checkpoint] >= settle:
                self.activity.pop(checkpoint, None)


@contextlib.asynccontextmanager
async def running(engine: FakeEngine, plan: Plan) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(engine, plan, Metrics())  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def periodic_plan(**overrides: object) -> Plan:
    values: dict[str, object] = {
        "period": 300.0,
        "timeout": 1800.0,
        "settle": 3.0,
        "periodic_kinds": frozenset({Kind.EXPERIMENT}),
    }
    values.update(overrides)
    return Plan(**values)  # type: ignore[arg-type]


def times(engine: FakeEngine) -> list[float]:
    return [t for t, _ in engine.runs]


async def test_periodic_sync_runs_once_per_period_from_the_start() -> None:
    engine = FakeEngine()
    async with running(engine, periodic_plan()):
        await asyncio.sleep(1000)
    assert times(engine) == [0, 300, 600, 900]
    assert all(Kind.EXPERIMENT in work.kinds for _, work in engine.runs)


async def test_period_is_the_minimum_gap_even_after_a_slow_sync() -> None:
    engine = FakeEngine()
    engine.duration = 400  # longer than the period: the next starts right after, not twice
    async with running(engine, periodic_plan()):
        await asyncio.sleep(1000)
    assert times(engine) == [0, 400, 800]


async def test_worker_without_periodic_work_never_syncs_on_a_timer() -> None:
    engine = FakeEngine()
    async with running(engine, periodic_plan(periodic_kinds=frozenset())):
        await asyncio.sleep(5000)
    assert engine.runs == []


async def test_checkpoint_is_synced_once_the_settle_window_passes() -> None:
    engine = FakeEngine()
    plan = periodic_plan(periodic_kinds=frozenset(), checkpoint_kinds=frozenset({Kind.ARTIFACT}))
    async with running(engine, plan) as scheduler:
        await asyncio.sleep(10)
        engine.activity["exp/t/checkpoint_000001"] = asyncio.get_running_loop().time()
        scheduler.wake()
        await asyncio.sleep(2)
        assert engine.runs == []  # still within the settle window
        await asyncio.sleep(2)
    assert times(engine) == [13]
    work = engine.runs[0][1]
    assert work.checkpoints == ["exp/t/checkpoint_000001"]
    assert work.kinds == {Kind.ARTIFACT}  # artifacts ride with the checkpoint (scenario 4)


async def test_explicit_trigger_syncs_a_checkpoint_before_it_settles() -> None:
    engine = FakeEngine()
    async with running(engine, periodic_plan(periodic_kinds=frozenset())) as scheduler:
        await asyncio.sleep(10)
        engine.activity["exp/t/checkpoint_000002"] = asyncio.get_running_loop().time()
        scheduler.request_sync()
        await asyncio.sleep(0.5)
    assert times(engine) == [10]
    assert engine.runs[0][1].checkpoints == ["exp/t/checkpoint_000002"]


async def test_hung_sync_is_cancelled_at_sync_timeout_and_retried_with_backoff() -> None:
    engine = FakeEngine()
    engine.hang_next = 2
    async with running(engine, periodic_plan(timeout=60.0, backoff_base=5.0)) as scheduler:
        await asyncio.sleep(200)
    # Hung at 0, cancelled at 60; retried after 5 s, hung again, cancelled at 125;
    # retried after 10 s and succeeded.
    assert engine.cancelled == [60, 125]
    assert times(engine)[:3] == [0, 65, 135]
    assert all(Kind.EXPERIMENT in work.kinds for _, work in engine.runs[:3])
    assert scheduler.failures == 0
    assert scheduler.ready.is_set()


async def test_failed_work_is_retried_even_when_nothing_new_is_due() -> None:
    engine = FakeEngine()
    engine.fail_next = 1
    plan = periodic_plan(periodic_kinds=frozenset(), checkpoint_kinds=frozenset({Kind.ARTIFACT}))
    async with running(engine, plan) as scheduler:
        scheduler.request_sync()
        await asyncio.sleep(30)
    assert times(engine) == [0, 1]  # the retry after 1 s carries the artifacts it owed
    assert engine.runs[1][1].kinds == {Kind.ARTIFACT}


async def test_requests_during_a_run_are_coalesced_into_one_next_run() -> None:
    engine = FakeEngine()
    engine.duration = 10
    plan = periodic_plan(periodic_kinds=frozenset(), checkpoint_kinds=frozenset({Kind.ARTIFACT}))
    async with running(engine, plan) as scheduler:
        scheduler.request_sync()
        await asyncio.sleep(1)
        for _ in range(5):
            scheduler.request_sync()
        await asyncio.sleep(100)
    assert times(engine) == [0, 10]


async def test_deferred_checkpoints_wait_for_the_period_without_sync_on_checkpoint() -> None:
    engine = FakeEngine()
    plan = periodic_plan(
        period=100.0, periodic_kinds=frozenset({Kind.ARTIFACT}), defer_checkpoints=True
    )
    async with running(engine, plan) as scheduler:
        await asyncio.sleep(20)
        engine.activity["exp/t/checkpoint_000003"] = asyncio.get_running_loop().time()
        scheduler.wake()
        await asyncio.sleep(150)
    assert times(engine) == [0, 100]
    assert engine.runs[1][1].checkpoints == ["exp/t/checkpoint_000003"]


async def test_a_triggered_sync_that_fails_is_retried_as_triggered() -> None:
    engine = FakeEngine()
    engine.fail_next = 1
    async with running(engine, periodic_plan(periodic_kinds=frozenset())) as scheduler:
        await asyncio.sleep(10)
        engine.activity["exp/t/checkpoint_000004"] = asyncio.get_running_loop().time()
        scheduler.request_sync()
        await asyncio.sleep(1.5)  # the retry comes after 1 s, long before the 3 s settle
    assert times(engine) == [10, 11]
    assert [work.explicit for _, work in engine.runs] == [True, True]
    assert engine.runs[1][1].checkpoints == ["exp/t/checkpoint_000004"]


async def test_a_coalesced_trigger_completes_only_the_checkpoints_pending_when_it_came() -> None:
    # The trainer: a big checkpoint and a trigger; a second checkpoint and a
    # trigger coalesced behind the running upload; then a third checkpoint that grows.
    engine = FakeEngine()
    engine.duration = 10  # the first checkpoint's upload
    plan = periodic_plan(periodic_kinds=frozenset(), settle=600.0)
    loop = asyncio.get_running_loop()
    first, second, third = (f"exp/t/checkpoint_00000{i}" for i in (1, 2, 3))
    async with running(engine, plan) as scheduler:
        engine.activity[first] = loop.time()
        scheduler.request_sync()
        await asyncio.sleep(0.5)
        engine.activity[second] = loop.time()
        scheduler.request_sync()
        await asyncio.sleep(0.5)
        engine.activity[third] = loop.time()  # still being written
        await asyncio.sleep(100)
    assert times(engine) == [0, 10]
    coalesced = engine.runs[1][1]
    assert coalesced.complete == {second}
    assert coalesced.checkpoints == [second]  # the third is neither settled nor triggered
    assert third in engine.activity


async def test_a_retried_trigger_completes_only_what_the_failed_run_was_asked() -> None:
    engine = FakeEngine()
    engine.fail_next = 1
    loop = asyncio.get_running_loop()
    first, later = "exp/t/checkpoint_000001", "exp/t/checkpoint_000002"
    async with running(engine, periodic_plan(periodic_kinds=frozenset())) as scheduler:
        engine.activity[first] = loop.time()
        scheduler.request_sync()
        await asyncio.sleep(0.5)  # the run fails at once; its retry comes after 1 s
        engine.activity[later] = loop.time()
        await asyncio.sleep(1)
    assert times(engine) == [0, 1]
    retry = engine.runs[1][1]
    assert retry.explicit
    assert retry.complete == {first}
    assert retry.checkpoints == [first]


async def test_the_final_sync_gives_up_at_its_deadline_and_a_cut_brings_it_forward() -> None:
    engine = FakeEngine()
    loop = asyncio.get_running_loop()

    async def keeps_changing(work: Round, settle: float) -> None:
        engine.runs.append((loop.time(), work))
        engine.activity["exp/t/checkpoint_000001"] = loop.time()

    engine.run = keeps_changing  # type: ignore[method-assign]
    scheduler = Scheduler(engine, periodic_plan(), Metrics())  # type: ignore[arg-type]
    assert await scheduler.final_sync(loop.time() + 25) is False
    # It stops when the next settle would come too late: what is left of the budget is
    # for aborting uploads and closing.
    assert 22 <= loop.time() <= 25
    started = loop.time()
    final = asyncio.create_task(scheduler.final_sync(started + 1000))
    await asyncio.sleep(2)
    scheduler.cut_final_sync(started + 7)  # SIGTERM during --once
    assert await final is False
    assert started + 2 < loop.time() <= started + 7


async def test_the_final_sync_reports_unreadable_files_as_not_durable() -> None:
    engine = FakeEngine()
    engine.failed = {"exp/t/checkpoint_000001/model.pt": "Permission denied"}
    scheduler = Scheduler(engine, periodic_plan(), Metrics())  # type: ignore[arg-type]
    assert await scheduler.final_sync(asyncio.get_running_loop().time() + 25) is False
    engine.failed = {}
    assert await scheduler.final_sync(asyncio.get_running_loop().time() + 25) is True


async def test_a_stop_that_comes_with_a_change_still_stops_the_scheduler() -> None:
    # A checkpoint that keeps growing wakes the scheduler many times a second, so SIGTERM's
    # cancel can arrive in the same instant as a wake (asyncio.wait_for lost it in 3.11).
    engine = FakeEngine()
    loop = asyncio.get_running_loop()
    engine.activity["exp/t/checkpoint_000001"] = loop.time()
    scheduler = Scheduler(engine, periodic_plan(periodic_kinds=frozenset()), Metrics())  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(1)  # asleep until the checkpoint settles
    scheduler.wake()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=60)
    assert task in done
    assert task.cancelled()


async def test_failing_since_holds_the_first_failure_until_a_success() -> None:
    """What the TrialsyncSidecarFailing alert compares with syncTimeout."""
    engine = FakeEngine()
    engine.fail_next = 3
    metrics = Metrics()
    scheduler = Scheduler(engine, periodic_plan(timeout=60.0), metrics)  # type: ignore[arg-type]
    assert metrics.sync_timeout._value.get() == 60.0
    assert metrics.failing_since._value.get() == 0
    seen: list[float] = []
    task = asyncio.create_task(scheduler.run())
    try:
        while len(engine.runs) < 4:
            seen.append(metrics.failing_since._value.get())
            await asyncio.sleep(0.25)
        await asyncio.sleep(1)  # the fourth run ends
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    failing = [value for value in seen if value]
    assert failing, "the failures were never marked"
    assert len(set(failing)) == 1, "a later failure moved the start"
    assert engine.fail_next == 0
    assert metrics.failing_since._value.get() == 0  # the fourth run succeeded
