"""Editing a nested JSON document (dicts and lists) at a path, for tests that mutate
admission reviews."""

from __future__ import annotations

from typing import Any


def set_path(doc: Any, path: tuple[Any, ...], value: Any, drop: bool = False) -> None:
    """Set ``doc[path[0]]...[path[-1]]`` to ``value``, or delete it with ``drop``."""
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
