"""The temporary names of HDFS writes (``webhdfs://`` and ``hdfs://`` alike).

On HDFS a file is visible as soon as it is created, so a file goes up under a temporary
name in its directory and a rename with overwrite puts it in place in one NameNode
operation: a reader sees the old file or the new, never a part.

A temporary file that a killed process left behind keeps its ``TEMP_PREFIX`` name, which
``is_temporary`` recognises: listings leave such files out, and delete those last modified
more than ``STALE_AFTER`` ago (``is_stale``). HDFS sets a file's modification time when it
is created and when it is closed, so the age of a file still being written is the age of
its write: a day is far beyond any write a sync's timeout allows.
"""

from __future__ import annotations

import posixpath
import time
import uuid

#: The name of a file being written starts with this until it is renamed into place.
TEMP_PREFIX = ".trialsync-part-"
#: Seconds after which a temporary file's writer is taken to be dead (a day).
STALE_AFTER = 86400.0


def temp_beside(target: str) -> str:
    """A fresh temporary name in the directory of ``target``."""
    return posixpath.join(posixpath.dirname(target), f"{TEMP_PREFIX}{uuid.uuid4().hex}")


def is_temporary(path: str) -> bool:
    """Whether ``path`` is a file being written (or left by a writer that died)."""
    return posixpath.basename(path).startswith(TEMP_PREFIX)


def is_stale(mtime: float | None, now: float | None = None) -> bool:
    """Whether a temporary file last modified at ``mtime`` (epoch seconds; None: unknown,
    kept) was left by a writer that died."""
    if mtime is None:
        return False
    return (time.time() if now is None else now) - mtime > STALE_AFTER
