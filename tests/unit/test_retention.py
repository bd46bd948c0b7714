"""The selection of ``keep_checkpoints``: which remote checkpoints a trial's listing
retires, and which objects are orphans of an interrupted deletion.

The property counts the examples that reached each branch, so it fails when generated
listings stop reaching one (see tests/unit/test_properties.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trialsync._engine import retention
from trialsync._engine.layout import MANIFEST_NAME

TRIAL = "exp/trial_0"
PROFILE = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _checkpoint(number: int) -> str:
    return f"{TRIAL}/checkpoint_{number:06d}" if number % 2 else f"{TRIAL}/checkpoint_{number}"


def _objects(checkpoint: str, complete: bool, files: int) -> set[str]:
    objects = {f"{checkpoint}/file_{i}" for i in range(files)}
    return objects | {f"{checkpoint}/{MANIFEST_NAME}"} if complete else objects


@st.composite
def trials(draw: st.DrawFn) -> tuple[dict[str, set[str]], int, set[str]]:
    numbers = draw(st.lists(st.integers(0, 30), unique=True, max_size=12))
    listing = {}
    for n in numbers:
        complete = draw(st.booleans())
        files = draw(st.integers(0 if complete else 1, 3))
        listing[_checkpoint(n)] = _objects(_checkpoint(n), complete, files)
    keep = draw(st.integers(1, 6))
    pending = set(draw(st.lists(st.sampled_from(sorted(listing) or [TRIAL + "/x"]), max_size=3)))
    return listing, keep, pending


reached: Counter[str] = Counter()


@PROFILE
@given(trials())
def _selection(case: tuple[dict[str, set[str]], int, set[str]]) -> None:
    listing, keep, pending = case
    plan = retention.plan(listing, keep, pending)
    complete = [c for c, objects in listing.items() if f"{c}/{MANIFEST_NAME}" in objects]
    newest = sorted(complete, key=retention.natural, reverse=True)
    # The newest `keep` complete ones stay, whatever else the listing holds.
    assert list(plan.kept) == newest[:keep]
    assert not set(plan.kept) & set(plan.retire)
    assert not set(plan.kept) & set(plan.orphans)
    assert len(plan.retire) == max(0, len(complete) - keep)
    # Retiring never leaves a trial without a complete checkpoint.
    if complete:
        assert plan.kept
    for checkpoint in plan.retire:
        assert checkpoint in complete
    for checkpoint in plan.orphans:
        assert checkpoint not in complete
        assert checkpoint not in pending
        # Only below the oldest kept one, once `keep` are complete: never one that may
        # still become complete as a newer-than-kept checkpoint.
        assert len(plan.kept) == keep
        assert retention.natural(checkpoint.rsplit("/", 1)[1]) < retention.natural(
            plan.kept[-1].rsplit("/", 1)[1]
        )
    incomplete_newer = [
        c
        for c in listing
        if c not in complete
        and plan.kept
        and retention.natural(c.rsplit("/", 1)[1])
        > retention.natural(plan.kept[-1].rsplit("/", 1)[1])
    ]
    assert not set(incomplete_newer) & set(plan.orphans)
    reached["nothing complete"] += not complete
    reached["fewer than keep: nothing retired"] += 0 < len(complete) < keep
    reached["exactly keep"] += len(complete) == keep
    reached["retired"] += bool(plan.retire)
    reached["orphans removed"] += bool(plan.orphans)
    reached["pending spared"] += any(
        c in pending
        and c not in complete
        and c not in plan.orphans
        and len(plan.kept) == keep
        and retention.natural(c.rsplit("/", 1)[1])
        < retention.natural(plan.kept[-1].rsplit("/", 1)[1])
        for c in listing
    )
    reached["incomplete newer than kept spared"] += bool(incomplete_newer)


def test_the_newest_complete_checkpoints_are_kept_and_only_older_ones_go() -> None:
    reached.clear()
    _selection()
    for branch in (
        "nothing complete",
        "fewer than keep: nothing retired",
        "exactly keep",
        "retired",
        "orphans removed",
        "pending spared",
        "incomplete newer than kept spared",
    ):
        assert reached[branch] >= 10, (branch, reached)


def test_names_are_ordered_as_restore_orders_them() -> None:
    listing = {
        c: _objects(c, True, 1)
        for c in (f"{TRIAL}/checkpoint_9", f"{TRIAL}/checkpoint_10", f"{TRIAL}/checkpoint_000011")
    }
    plan = retention.plan(listing, 2)
    assert plan.retire == (f"{TRIAL}/checkpoint_9",)
    assert plan.kept == (f"{TRIAL}/checkpoint_000011", f"{TRIAL}/checkpoint_10")


def test_an_interrupted_deletion_leaves_orphans_that_the_next_plan_removes() -> None:
    # keep 1: checkpoint_1 lost its manifest (deleted first), then the sidecar was killed.
    listing = {
        f"{TRIAL}/checkpoint_1": _objects(f"{TRIAL}/checkpoint_1", False, 2),
        f"{TRIAL}/checkpoint_2": _objects(f"{TRIAL}/checkpoint_2", True, 2),
        f"{TRIAL}/checkpoint_3": _objects(f"{TRIAL}/checkpoint_3", False, 1),  # uploading
    }
    plan = retention.plan(listing, 1)
    assert plan == retention.Plan((), (f"{TRIAL}/checkpoint_1",), (f"{TRIAL}/checkpoint_2",))
    assert not retention.plan(listing, 1, pending={f"{TRIAL}/checkpoint_1"})


def test_the_only_complete_checkpoint_is_never_retired() -> None:
    listing = {
        f"{TRIAL}/checkpoint_{n}": _objects(f"{TRIAL}/checkpoint_{n}", n == 1, 1) for n in (0, 1, 2)
    }
    plan = retention.plan(listing, 1)
    assert plan.retire == ()
    assert plan.kept == (f"{TRIAL}/checkpoint_1",)
    assert plan.orphans == (f"{TRIAL}/checkpoint_0",)


def test_a_local_copy_older_than_the_kept_ones_is_not_published_again() -> None:
    kept = (f"{TRIAL}/checkpoint_5", f"{TRIAL}/checkpoint_4")
    assert retention.retired_below(f"{TRIAL}/checkpoint_3", kept, 2)
    assert not retention.retired_below(f"{TRIAL}/checkpoint_6", kept, 2)
    assert not retention.retired_below(f"{TRIAL}/checkpoint_3", kept, 3)


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retention.plan({}, 0)
