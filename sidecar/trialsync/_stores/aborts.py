"""Clean-up requests that outlive the upload they clean up.

A multipart (S3) or resumable (GCS) upload that fails or is cancelled leaves parts in the
store, billed until aborted. The abort cannot run in the cancelled task, so it is scheduled
here, and the store waits for these before it closes its clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Seconds a store's close waits for the aborts still running (at SIGTERM, at most what
#: is left of the budget).
GRACE = 5.0
_pending: set[asyncio.Task[None]] = set()


def schedule(abort: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``abort()`` in the background; a failure is logged, not raised."""
    task = asyncio.get_running_loop().create_task(_run(abort, what))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def wait(grace: float) -> None:
    """Let scheduled aborts finish, for at most ``grace`` seconds."""
    if _pending and grace > 0:
        await asyncio.wait(set(_pending), timeout=grace)


def pending() -> int:
    return len(_pending)


async def _run(abort: Callable[[], Awaitable[object]], what: str) -> None:
    try:
        await abort()
    except Exception as exc:
        log.warning("could not abort the upload of %s: %s", what, exc)
