"""What a sidecar's ``GET /status`` says, from the engine's and the scheduler's state: when
something counts as due, and which state wins."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from trialsync._engine.engine import EngineOptions, SyncEngine
from trialsync._engine.layout import Kind
from trialsync._engine.scheduler import Plan, Scheduler
from trialsync._process import sync_status
from trialsync.contract import Duty
from trialsync.metrics import Metrics

PERIOD, SETTLE = 10.0, 3.0


def _sidecar(tmp_path: Path, plan: Plan) -> tuple[SyncEngine, Scheduler]:
    metrics = Metrics()
    engine = SyncEngine(EngineOptions(root=str(tmp_path)), cast(Any, None), metrics)
    scheduler = Scheduler(engine, plan, metrics)
    scheduler.ready.set()
    return engine, scheduler


def _state(engine: SyncEngine, scheduler: Scheduler, after: float) -> dict[str, Any]:
    return sync_status.report(Duty.UPLOAD, engine, scheduler, now=time.time() + after)


async def test_a_checkpoint_is_due_once_settled_and_lagging_a_period_later(tmp_path: Path) -> None:
    engine, scheduler = _sidecar(tmp_path, Plan(period=PERIOD, timeout=60, settle=SETTLE))
    assert _state(engine, scheduler, 0)["state"] == "synced"
    engine.note_change("exp/t/checkpoint_000001/model.bin", False, False)
    fresh = _state(engine, scheduler, 0)
    assert fresh["state"] == "synced"
    assert fresh["oldest_unsynced"]["path"] == "exp/t/checkpoint_000001"
    assert fresh["pending_checkpoints"] == 1
    assert _state(engine, scheduler, SETTLE + PERIOD - 1)["state"] == "synced"
    assert _state(engine, scheduler, SETTLE + PERIOD + 1)["state"] == "lagging"


async def test_periodic_state_lags_only_after_missing_a_whole_period(tmp_path: Path) -> None:
    plan = Plan(
        period=PERIOD, timeout=60, settle=SETTLE, periodic_kinds=frozenset({Kind.EXPERIMENT})
    )
    engine, scheduler = _sidecar(tmp_path, plan)
    engine.note_change("exp/experiment_state-1.json", False, False)
    assert _state(engine, scheduler, 0)["oldest_unsynced"]["path"] == "exp/experiment_state-1.json"
    assert _state(engine, scheduler, 1.5 * PERIOD)["state"] == "synced"
    assert _state(engine, scheduler, 2 * PERIOD + 1)["state"] == "lagging"


async def test_artifacts_that_wait_for_the_next_checkpoint_count_for_nothing(
    tmp_path: Path,
) -> None:
    engine, scheduler = _sidecar(tmp_path, Plan(period=PERIOD, timeout=60, settle=SETTLE))
    engine.note_change("exp/t/result.json", False, False)
    assert engine.unsynced_files() == ["exp/t/result.json"]
    later = _state(engine, scheduler, 100 * PERIOD)
    assert (later["state"], later["oldest_unsynced"]) == ("synced", None)


async def test_failing_wins_and_starting_comes_before_any_success(tmp_path: Path) -> None:
    engine, scheduler = _sidecar(tmp_path, Plan(period=PERIOD, timeout=60, settle=SETTLE))
    scheduler.ready.clear()
    assert _state(engine, scheduler, 0)["state"] == "starting"
    scheduler.failing.set()
    scheduler.failing_since, scheduler.failure_reason = 5.0, "credentials"
    failing = _state(engine, scheduler, 0)
    assert (failing["state"], failing["failing_since"], failing["failure_reason"]) == (
        "failing",
        5.0,
        "credentials",
    )
    restoring = sync_status.Restoring(failing_since=7.0, failure_reason="error")
    scheduler.failing.clear()
    during = sync_status.report(Duty.UPLOAD, engine, scheduler, restoring)
    assert (during["state"], during["failure_reason"]) == ("failing", "error")


def test_a_sidecar_with_nothing_of_its_own_to_sync_is_synced() -> None:
    document = sync_status.idle_report(Duty.RECEIVE)
    assert (document["state"], document["duty"]) == ("synced", "receive")
