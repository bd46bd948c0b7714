"""bandwidth_limit against the real S3 server: a 5 MiB/s limit holds over a few seconds for
many concurrent uploads, through both S3 clients: never more than 15% over it, and not
throttled far below it (tests/unit/test_throttle.py checks the bucket's arithmetic)."""

from __future__ import annotations

import pathlib
import time

import pytest

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.engines import running_engine
from trialsync._engine import scanner
from trialsync._engine.engine import Round
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._stores.fsspec_store import RemoteStore
from trialsync._util import throttle

MiB = 2**20
RATE = 5 * MiB


class Granted:
    """A limiter that records when it granted how many bytes."""

    def __init__(self, inner: throttle.Limiter) -> None:
        self.inner = inner
        self.grants: list[tuple[float, int]] = []

    async def take(self, size: int) -> None:
        await self.inner.take(size)
        self.grants.append((time.perf_counter(), size))


@pytest.mark.parametrize("botocore", [False, True], ids=["lean", "botocore"])
async def test_a_limit_holds_for_concurrent_uploads(
    botocore: bool, s3: Backend, root: pathlib.Path
) -> None:
    exp = trials.experiment(root)
    for index in range(4):  # 4 trials at once, one large (multipart) file and small ones
        files = {"model.pt": 5 * MiB, **{f"shard_{i}": MiB // 4 for i in range(10)}}
        trials.checkpoint(trials.trial(exp, f"trial_{index:05d}"), 1, files)
    total = sum(st[0] for st in scanner.scan(str(root)).values())
    limiter = Granted(throttle.Throttle(RATE))
    store = RemoteStore(
        s3.url, s3.storage_options, part_size=5 * MiB, s3_botocore=botocore, limiter=limiter
    )
    async with running_engine(store, root, "none") as run:
        await run.engine.recover(settle=0)
        started = time.perf_counter()
        await run.engine.run(Round(full=True), settle=0)
        seconds = time.perf_counter() - started
    rate = total / seconds
    assert len([r for r in s3.listing() if r.endswith(MANIFEST_NAME)]) == 4  # all published
    said = f"{rate / MiB:.2f} MiB/s over {seconds:.1f} s"
    assert rate <= RATE * 1.15, said  # the limit: never more than 15% over it
    # Not far below it while sending: from the first grant to the last (the round's own
    # time also holds publishing four checkpoints, which a loaded machine slows).
    assert sum(size for _, size in limiter.grants) >= total  # every byte went through it
    (first, _), (last, _) = limiter.grants[0], limiter.grants[-1]
    sent = sum(size for _, size in limiter.grants[1:])
    granted = sent / (last - first)
    assert granted >= RATE * 0.75, f"{granted / MiB:.2f} MiB/s granted"
