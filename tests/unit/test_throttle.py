"""The token bucket behind bandwidth_limit, on the loop's virtual time: exact rates."""

from __future__ import annotations

import asyncio

import pytest

from trialsync._util import throttle

MiB = 2**20


@pytest.mark.looptime
async def test_the_bucket_is_shared_by_concurrent_takers() -> None:
    loop = asyncio.get_running_loop()
    bucket = throttle.Throttle(10 * MiB, clock=loop.time)
    started = loop.time()
    done: list[float] = []

    async def take() -> None:
        await bucket.take(MiB)
        done.append(loop.time() - started)

    await asyncio.gather(*(take() for _ in range(20)))
    # 20 MiB at 10 MiB/s, starting empty: one taker every 0.1 s, in arrival order.
    assert done == pytest.approx([0.1 * (i + 1) for i in range(20)], abs=1e-6)
