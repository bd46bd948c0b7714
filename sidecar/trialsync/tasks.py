"""Running coroutines together with the first failure surfaced as itself."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` concurrently; on the first failure cancel the rest and raise it.

    The failure is raised as itself, not as an ExceptionGroup, so logs and callers see
    the real error, with a note of how many others failed.
    """
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if len(failed.exceptions) > 1:
            first.add_note(f"{len(failed.exceptions) - 1} more operations failed")
        raise first from None
