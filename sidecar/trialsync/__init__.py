"""trialsync: Ray Tune's SyncConfig for Kubernetes; the sync engine and sidecar.

Public API (mirrors ``ray.tune.syncer``): ``SyncConfig``, ``Syncer``, ``FsspecSyncer``.
"""

from trialsync.config import SyncConfig
from trialsync.syncer import FsspecSyncer, Syncer, SyncError

__all__ = ["FsspecSyncer", "SyncConfig", "SyncError", "Syncer"]
