"""The seed's SyncConfig: fields, defaults and validation, as Ray Tune defines them.

The defaults and the checks of each field are ``trialsync.contract``'s, the same the
operator and the SyncConfig CRD apply. Which storage backends can serve an upload dir is
asked of a ``BackendCheck``: by default the fsspec backends installed in this Python
(``installed_backend``); the operator asks what its sidecar image serves instead. This
module imports no storage client until a backend is checked.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING, Union

from trialsync import contract
from trialsync.contract import PACKAGE_FOR, BackendCheck, quoted

if TYPE_CHECKING:
    from trialsync.syncer import Syncer

SyncerSpec = Union[str, "Syncer", None]

__all__ = ["BackendCheck", "SyncConfig", "installed_backend", "validate_uri"]


@dataclasses.dataclass
class SyncConfig:
    """Configuration for syncing a tuning experiment to durable storage (Ray's SyncConfig).

    ``upload_dir``: URI that checkpoints, artifacts and experiment state are mirrored under
    (``s3://bucket/prefix``, ``gs://...``, ``webhdfs://namenode:9870/...``, ``hdfs://...``,
    ``file:///...``, any fsspec URI).
    None means workers sync their trial dirs to the head node instead.
    ``syncer``: ``"auto"`` (the fsspec syncer), None or ``"none"`` (disable worker-to-head
    syncing; an error with an upload_dir), a ``Syncer`` instance or
    ``"package.module:Class"`` (a custom syncer: an error without an upload_dir).
    ``sync_period``: minimum seconds between two periodic syncs (scenarios 1 and 3).
    ``sync_timeout``: seconds after which a sync is cancelled and retried (scenarios 1, 2).
    ``sync_artifacts``: also sync trial-dir files that are not checkpoints (scenario 4).
    ``sync_on_checkpoint``: force a worker-to-head sync on every checkpoint (scenario 3).
    """

    upload_dir: str | None = contract.UPLOAD_DIR.default
    syncer: SyncerSpec = contract.SYNCER.default
    sync_period: int = contract.SYNC_PERIOD.default
    sync_timeout: int = contract.SYNC_TIMEOUT.default
    sync_artifacts: bool = contract.SYNC_ARTIFACTS.default
    sync_on_checkpoint: bool = contract.SYNC_ON_CHECKPOINT.default

    def validate_upload_dir(
        self, upload_dir: str | None = None, *, backend: BackendCheck | None = None
    ) -> bool:
        """Return True if this configuration can sync, else raise ValueError saying why.

        Checks the upload_dir URI (scheme known, backend available, well formed), that the
        syncer fits it (None contradicts an upload_dir, a custom syncer needs one, as in
        Ray), and that the period and timeout are whole seconds within bounds.
        ``upload_dir``: the path to validate, as in Ray (default: this config's).
        ``backend`` says which storage backends exist; by default, those installed in
        this Python.
        """
        upload_dir = upload_dir or self.upload_dir
        contract.check_seed(
            upload_dir,
            self.syncer,
            self.sync_period,
            self.sync_timeout,
            backend or installed_backend,
        )
        if upload_dir and self.syncer is not None and not isinstance(self.syncer, str):
            return self.syncer.validate_upload_dir(upload_dir)
        return True


def validate_uri(uri: str, backend: BackendCheck | None = None) -> None:
    """Raise ValueError unless ``uri`` names a storage location a backend can write to.

    ``backend`` decides which schemes can be served (default: ``installed_backend``).
    """
    if not isinstance(uri, str):
        raise ValueError(f"upload_dir must be a URI, got {uri!r}")
    contract.UPLOAD_DIR.check(uri)
    (backend or installed_backend)(uri.partition("://")[0].lower(), uri)


def installed_backend(scheme: str, uri: str) -> None:
    """A ``BackendCheck``: the fsspec backends installed in this Python (imported lazily)."""
    import fsspec
    from fsspec.registry import known_implementations

    if scheme not in known_implementations and scheme not in fsspec.available_protocols():
        raise ValueError(
            f"upload_dir {quoted(uri)} has an unknown scheme {quoted(scheme)}; fsspec knows "
            f"{', '.join(sorted(('s3', 'gs', 'gcs', 'webhdfs', 'hdfs', 'file', 'memory')))} and "
            "others"
        )
    package = PACKAGE_FOR.get(scheme)
    try:
        fsspec.get_filesystem_class(scheme)
        # fsspec's own HDFS class (pyarrow's) stands in when hdfs-native, whose client
        # the store uses, is missing; some import their client only when instantiated.
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"No module named {package!r}")
    except ImportError as exc:
        raise ValueError(
            f"upload_dir {quoted(uri)} needs {package or 'the fsspec backend for ' + scheme}, "
            f"which is not installed ({exc})"
        ) from exc
