"""``trialsync_publish_latency_seconds`` runs from the moment a checkpoint is complete:
the end of its settle window, or the start of the run a trigger asked for."""

from __future__ import annotations

import asyncio
import pathlib

from tests.support import trials
from tests.support.engines import running_engine
from trialsync._engine.engine import Round, SyncEngine
from trialsync._stores.fsspec_store import RemoteStore

SETTLE = 3.0
CKPT = "exp/trial_00000/checkpoint_000001"


def _observed(engine: SyncEngine) -> tuple[float, float]:
    """(count, sum) of the publish latency histogram."""
    samples = {
        s.name: s.value
        for family in engine.metrics.registry.collect()
        if family.name == "trialsync_publish_latency_seconds"
        for s in family.samples
    }
    return (
        samples["trialsync_publish_latency_seconds_count"],
        samples["trialsync_publish_latency_seconds_sum"],
    )


async def test_a_settled_checkpoint_counts_from_the_end_of_its_settle_window(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 1000})
    async with running_engine(RemoteStore(f"file://{tmp_path / 'remote'}"), root) as run:
        engine = run.engine
        await engine.recover(SETTLE)
        # Last changed 10 s ago: complete (settled) 7 s ago, published now.
        engine.activity[CKPT] = asyncio.get_running_loop().time() - 10
        await engine.run(Round(checkpoints=[CKPT]), SETTLE)
        assert CKPT in engine.ledger.published
        count, total = _observed(engine)
        assert count == 1
        assert 7 <= total < 9


async def test_a_triggered_checkpoint_counts_from_the_start_of_the_run(
    root: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    trials.checkpoint(trials.trial(trials.experiment(root)), 1, {"model.pt": 1000})
    async with running_engine(RemoteStore(f"file://{tmp_path / 'remote'}"), root) as run:
        engine = run.engine
        await engine.recover(SETTLE)
        engine.activity[CKPT] = asyncio.get_running_loop().time()  # still changing
        await engine.run(Round(checkpoints=[CKPT], complete=frozenset({CKPT})), SETTLE)
        assert CKPT in engine.ledger.published
        count, total = _observed(engine)
        assert count == 1
        assert 0 < total < 2
