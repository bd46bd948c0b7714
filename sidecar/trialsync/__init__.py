"""trialsync: Ray Tune's SyncConfig for Kubernetes; the sync engine and sidecar.

Public API (mirrors ``ray.tune.syncer``): ``SyncConfig``, ``Syncer``, ``FsspecSyncer``,
``SyncError``. The names are imported on first use, so ``import trialsync.config`` (the
seed model, all the operator needs) loads no storage client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trialsync.config import SyncConfig
    from trialsync.syncer import FsspecSyncer, Syncer, SyncError

__all__ = ["FsspecSyncer", "SyncConfig", "SyncError", "Syncer"]

_HOME = {
    "SyncConfig": "trialsync.config",
    "Syncer": "trialsync.syncer",
    "FsspecSyncer": "trialsync.syncer",
    "SyncError": "trialsync.syncer",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'trialsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
