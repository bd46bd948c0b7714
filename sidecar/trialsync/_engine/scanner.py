"""A stat walk of the local tree: the slow path, used at start-up and for reconciles."""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable

from trialsync._util.local_files import Stat


def scan(root: str, under: str = "") -> dict[str, Stat]:
    """Return {root-relative path: (size, mtime_ns)} for regular files below root/under.

    Symlinks are not followed; files that vanish during the walk are skipped.
    """
    found: dict[str, Stat] = {}
    start = os.path.join(root, under) if under else root
    prefix = under + "/" if under else ""
    stack = [(start, prefix)]
    while stack:
        path, rel_prefix = stack.pop()
        try:
            entries = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    stack.append((entry.path, rel_prefix + entry.name + "/"))
                elif stat_mod.S_ISREG(st.st_mode):
                    found[rel_prefix + entry.name] = (st.st_size, st.st_mtime_ns)
    return found


def stat_file(root: str, rel: str) -> Stat | None:
    """(size, mtime_ns) of a regular file, or None if it is gone or not a regular file."""
    try:
        st = os.lstat(os.path.join(root, rel))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat_mod.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns)


def stat_files(root: str, rels: Iterable[str]) -> dict[str, Stat | None]:
    """``stat_file`` of each path: one call to run in a worker thread."""
    return {rel: stat_file(root, rel) for rel in rels}
