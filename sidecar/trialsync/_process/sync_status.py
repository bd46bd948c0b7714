"""What ``GET /status`` answers: how far this sidecar's syncing is behind, in one small JSON
document the operator polls to count a SyncConfig's pods (docs/architecture.md, "Pod
sync status").

The states, first that holds:

- ``failing``: the last sync failed (or, at start, the last attempt at the restore), and
  none has succeeded since;
- ``starting``: no sync has succeeded yet (the ledger is being rebuilt, or a restore runs);
- ``lagging``: something has been due for longer than one ``sync_period``: a checkpoint
  that settled (``checkpoint_settle`` after its last change) and is not yet published; a
  file of a kind synced every period (the head's experiment state, a worker's trial dir
  sent to the head) changed more than one period before that and still not sent; a file
  that could not be read (its checkpoint waits for a change to it);
- ``synced``: nothing has been due for that long.

Artifacts that go with the next checkpoint (``sync_artifacts``) are not due before it,
and count for neither. ``oldest_unsynced`` is the oldest thing still pending, by when it
first changed; ``newest_checkpoint`` the last one published. Times are Unix seconds of
the sidecar's clock, and ``now`` is that clock when it answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from trialsync._engine.engine import SyncEngine
from trialsync._engine.scheduler import Scheduler
from trialsync.contract import Duty

VERSION = 1
SYNCED, LAGGING, FAILING, STARTING = "synced", "lagging", "failing", "starting"
STATES = (SYNCED, LAGGING, FAILING, STARTING)
JsonDict = dict[str, Any]


@dataclasses.dataclass
class Restoring:
    """The restore at start, as far as the status goes: a failed attempt makes the sidecar
    ``failing`` until the restore is done."""

    failing_since: float | None = None
    failure_reason: str | None = None


def report(
    duty: Duty,
    engine: SyncEngine,
    scheduler: Scheduler,
    restoring: Restoring | None = None,
    now: float | None = None,
) -> JsonDict:
    """The ``GET /status`` document of a sidecar that syncs (duty upload or send)."""
    wall = time.time()
    now = wall if now is None else now
    plan = scheduler.plan
    loop_now = asyncio.get_running_loop().time()
    # What the sidecar owes on its own (not artifacts waiting for the next checkpoint):
    # {key: (first changed, due at)}.
    owed: dict[str, tuple[float, float]] = {}
    for key, since in engine.pending_times().items():
        last_change = engine.activity.get(key)
        if last_change is not None:  # a checkpoint: due once it settled
            settled = wall - (loop_now - last_change) + plan.settle
            owed[key] = (since, settled + (plan.period if plan.defer_checkpoints else 0.0))
        elif key in engine.dirty:
            placement = engine.layout.place(key)
            if placement is not None and placement.kind in plan.periodic_kinds:
                owed[key] = (since, since + plan.period)
        else:  # an unreadable file, or the checkpoint that holds one
            owed[key] = (since, since)
    oldest = min(owed.items(), key=lambda item: (item[1][0], item[0]), default=None)
    due = min((at for _, at in owed.values()), default=None)
    failing_since: float | None
    if restoring is not None and restoring.failing_since is not None:
        state = FAILING
        failing_since, reason = restoring.failing_since, restoring.failure_reason
    elif scheduler.failing.is_set():
        state = FAILING
        failing_since, reason = scheduler.failing_since, scheduler.failure_reason
    else:
        failing_since, reason = None, None
        if not scheduler.ready.is_set():
            state = STARTING
        elif due is not None and now - due > plan.period:
            state = LAGGING
        else:
            state = SYNCED
    newest = engine.newest_published
    return {
        "version": VERSION,
        "state": state,
        "duty": duty.value,
        "sync_period": plan.period,
        "now": now,
        "last_success": scheduler.last_success,
        "failing_since": failing_since,
        "failure_reason": reason,
        "newest_checkpoint": (
            {"path": newest[0], "published_at": newest[1]} if newest is not None else None
        ),
        "oldest_unsynced": {"path": oldest[0], "since": oldest[1][0]} if oldest else None,
        "pending_checkpoints": len(engine.activity),
        "pending_files": len(engine.dirty),
    }


def idle_report(duty: Duty, now: float | None = None) -> JsonDict:
    """The document of a sidecar with nothing of its own to sync: the head that receives
    its workers' trial dirs (its volume is their store), or one with syncing disabled."""
    return {
        "version": VERSION,
        "state": SYNCED,
        "duty": duty.value,
        "sync_period": None,
        "now": time.time() if now is None else now,
        "last_success": None,
        "failing_since": None,
        "failure_reason": None,
        "newest_checkpoint": None,
        "oldest_unsynced": None,
        "pending_checkpoints": 0,
        "pending_files": 0,
    }
