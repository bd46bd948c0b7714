"""A Secret volume laid out and updated as the kubelet's atomic writer does it.

Each version is a timestamped dir ``..<time>``; the ``..data`` link names the current one
and is swapped by renaming a new link over it; each key is a link ``KEY -> ..data/KEY``.
So a reader that follows ``..data`` once sees one whole version, and the swap is atomic.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path


def publish(directory: Path, data: Mapping[str, str]) -> str:
    """Make ``data`` (key -> content) the Secret's current version; its dir's name."""
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    version = directory / stamp
    suffix = 0
    while version.exists():  # two versions within a microsecond
        suffix += 1
        version = directory / f"{stamp}{suffix}"
    version.mkdir()
    for key, content in data.items():
        (version / key).write_text(content)
    tmp = directory / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    tmp.rename(data_link)  # the atomic swap
    for key in data:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    for entry in directory.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    if old is not None:
        for file in (directory / old).iterdir():
            file.unlink()
        (directory / old).rmdir()
    return version.name
