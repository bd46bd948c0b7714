"""Errors a store raises that the engine must tell apart from a failing store."""

from __future__ import annotations


class ObjectRefused(PermissionError):
    """The store refuses this one object for good; its other objects are not affected.

    Not a credentials problem (those are plain ``PermissionError``s and fail the whole
    sync): the head-node service refuses a path in a trial dir another worker holds, a
    path only the head writes, or an object over its size limit. Retrying cannot help, so
    only the checkpoint or artifact the object belongs to should fail, logged with its
    path. ``rel`` is the object's path; ``reason`` a short word for metrics.
    """

    def __init__(self, message: str, rel: str, reason: str) -> None:
        super().__init__(message)
        self.rel = rel
        self.reason = reason
