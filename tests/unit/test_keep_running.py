"""``tasks.keep_running``: a task that a stray cancellation ends is started again; one
that ends otherwise, or the stop, ends it (pure asyncio, on a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from trialsync._util import tasks

pytestmark = pytest.mark.looptime


async def test_a_stray_cancellation_starts_the_task_again_until_the_stop() -> None:
    runs: list[float] = []
    strays: list[float] = []
    loop = asyncio.get_running_loop()

    async def leaves_a_cancel_pending() -> None:
        runs.append(loop.time())
        if len(runs) <= 3:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # as asyncio may leave one: raised at the next await
        await asyncio.sleep(10**6)

    stop = asyncio.Event()
    stopped = loop.create_task(stop.wait())
    supervised = loop.create_task(
        tasks.keep_running(leaves_a_cancel_pending, stopped, lambda: strays.append(loop.time()))
    )
    await asyncio.sleep(60)
    assert len(runs) == 4  # three ended by a stray, the fourth runs on
    assert len(strays) == 3
    assert not supervised.done()
    stop.set()
    running = await supervised
    assert not running.done()  # the caller stops it
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_task_that_fails_or_returns_is_handed_back_at_once() -> None:
    async def fails() -> None:
        await asyncio.sleep(1)
        raise RuntimeError("the scheduler's own error")

    stopped = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    strays: list[None] = []
    done = await tasks.keep_running(fails, stopped, lambda: strays.append(None))
    assert done.done()
    assert strays == []
    with pytest.raises(RuntimeError, match="the scheduler's own error"):
        done.result()
    stopped.cancel()
