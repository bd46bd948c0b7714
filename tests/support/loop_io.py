"""Catches file system calls made on the event loop's thread, where they stall the loop.

Python raises audit events for ``open()``/``os.open`` (``open``), ``os.scandir`` and
``os.listdir``. ``io_on_this_thread(prefix)`` records those the current thread (the one
running the event loop) makes on paths under ``prefix``; calls made in worker threads
(``asyncio.to_thread``) are not recorded. An audit hook cannot be removed, so one is
installed for the process and does nothing outside the context manager.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

_EVENTS = {"open", "os.scandir", "os.listdir"}
_watch: tuple[int, str, list[tuple[str, str]]] | None = None
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    watch = _watch
    if watch is None or event not in _EVENTS:
        return
    thread, prefix, seen = watch
    if threading.get_ident() != thread or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and path.startswith(prefix):
        seen.append((event, path))


@contextlib.contextmanager
def io_on_this_thread(prefix: str) -> Iterator[list[tuple[str, str]]]:
    """Yield a list that fills with (event, path) for each call on this thread."""
    global _watch, _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    seen: list[tuple[str, str]] = []
    _watch = (threading.get_ident(), str(prefix), seen)
    try:
        yield seen
    finally:
        _watch = None
