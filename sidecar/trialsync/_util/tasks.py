"""Running coroutines together: the first failure surfaced as itself, and bounded fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


async def bounded(limit: int, items: Collection[T], each: Callable[[T], Awaitable[None]]) -> None:
    """Run ``each(item)`` for every item, at most ``limit`` at a time, in the items' order.

    ``limit`` workers take the next item as they finish one, so no more than ``limit``
    coroutines exist at once, however many items there are. The first failure cancels
    the rest and is raised as itself (see ``run_all``).
    """
    pending = iter(items)

    async def worker() -> None:
        for item in pending:  # shared: each item goes to exactly one worker
            await each(item)

    await run_all([worker() for _ in range(min(max(1, limit), len(items)))])


async def keep_running(
    start: Callable[[], Coroutine[Any, Any, None]],
    until: asyncio.Future[Any],
    on_stray: Callable[[], None],
) -> asyncio.Task[None]:
    """Run ``start()`` as a task until ``until`` is done, and start it again each time it
    ends cancelled while ``until`` is not (``on_stray`` is told).

    Nobody cancels such a task but the caller, after ``until``: a cancellation that ends
    it before is a stray. Python 3.11's asyncio can leave one pending on a task (a
    TaskGroup or a timeout whose cancel crossed the end of its block), raised at any
    later await. Returns the task running when ``until`` completed, or the one that
    ended on its own (its result or error is the caller's).
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(start())
    while True:
        await asyncio.wait({task, until}, return_when=asyncio.FIRST_COMPLETED)
        if until.done() or not task.cancelled():
            return task
        on_stray()
        task = loop.create_task(start())
