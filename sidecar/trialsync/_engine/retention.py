"""Which remote checkpoints of a trial ``keep_checkpoints`` retires, from one listing.

A checkpoint is complete when its manifest is listed (docs/architecture.md, "Publishing a
checkpoint"); a restore takes the newest complete one in the natural order of names. So
retention keeps the newest ``keep`` complete checkpoints of each trial dir and retires
the complete ones older than the oldest kept. Checkpoint dirs without a manifest that are
older than the oldest kept one (once ``keep`` are complete) and not pending here are
orphans: what a deletion
interrupted after its manifest went left behind (or an abandoned upload of a checkpoint
that retention would retire anyway); their objects are removed too. Nothing is retired
while a trial has ``keep`` or fewer complete checkpoints, so the only complete checkpoint
of a trial is never deleted, nor is any incomplete one newer than the oldest kept.

All state comes from the listing: after a restart the same plan is made again, and a
deletion a kill interrupted is finished.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Mapping

from trialsync._engine.layout import MANIFEST_NAME


@dataclasses.dataclass(frozen=True)
class Plan:
    """``retire``: complete checkpoints to delete, manifest first (oldest first);
    ``orphans``: checkpoint dirs without a manifest whose objects go; ``kept``: the
    complete checkpoints kept, newest first."""

    retire: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.retire or self.orphans)


def natural(name: str) -> list[object]:
    """A sort key that orders ``checkpoint_9`` before ``checkpoint_10`` (restore's order)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def checkpoints_of(
    listing: Iterable[str], checkpoint_of: Callable[[str], str | None]
) -> dict[str, dict[str, set[str]]]:
    """{trial dir: {checkpoint dir: its listed object paths}} of a listing."""
    trials: dict[str, dict[str, set[str]]] = {}
    for rel in listing:
        checkpoint = checkpoint_of(rel)
        if checkpoint is None:
            continue
        trial = checkpoint.rpartition("/")[0]
        trials.setdefault(trial, {}).setdefault(checkpoint, set()).add(rel)
    return trials


def plan(
    checkpoints: Mapping[str, Collection[str]], keep: int, pending: Collection[str] = ()
) -> Plan:
    """The plan for one trial dir: ``checkpoints`` maps each checkpoint dir to its listed
    objects; ``pending``: checkpoint dirs this sidecar is still publishing (never orphans).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    complete = sorted(
        (c for c, objects in checkpoints.items() if f"{c}/{MANIFEST_NAME}" in objects),
        key=_leaf,
        reverse=True,
    )
    if len(complete) < keep:
        return Plan(kept=tuple(complete))
    # Kept is full: below its oldest, only objects of retired checkpoints remain (a
    # deletion interrupted after the manifest went leaves them with none).
    kept = complete[:keep]
    oldest_kept = _leaf(kept[-1])
    retire = sorted(complete[keep:], key=_leaf)
    orphans = sorted(
        (
            c
            for c in checkpoints
            if c not in complete and c not in pending and _leaf(c) < oldest_kept
        ),
        key=_leaf,
    )
    return Plan(tuple(retire), tuple(orphans), tuple(kept))


def retired_below(checkpoint: str, kept: Collection[str], keep: int) -> bool:
    """Whether ``checkpoint`` (of the same trial) is older than every one of ``kept``
    when ``kept`` is full: retention would delete it, so a local copy of it is not
    published again."""
    return len(kept) >= keep and all(_leaf(checkpoint) < _leaf(k) for k in kept)


def _leaf(checkpoint: str) -> list[object]:
    return natural(checkpoint.rpartition("/")[2])
