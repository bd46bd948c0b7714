"""The seed's SyncConfig: fields, defaults and validation, as Ray Tune defines them."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import TYPE_CHECKING, Union

import fsspec
from fsspec.registry import known_implementations

if TYPE_CHECKING:
    from trialsync.syncer import Syncer

SyncerSpec = Union[str, "Syncer", None]

DEFAULT_SYNC_PERIOD = 300
DEFAULT_SYNC_TIMEOUT = 1800

# Bucket names as S3 and GCS accept them (GCS also allows dots and underscores).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"}
# The install hint for the backends users ask for most.
_EXTRA_FOR = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "hdfs": "pyarrow",
    "abfs": "adlfs",
    "az": "adlfs",
}


@dataclasses.dataclass
class SyncConfig:
    """Configuration for syncing a tuning experiment to durable storage (Ray's SyncConfig).

    ``upload_dir``: URI that checkpoints, artifacts and experiment state are mirrored under
    (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///...``, any fsspec URI).
    None means workers sync their trial dirs to the head node instead.
    ``syncer``: ``"auto"`` (the fsspec syncer), None (disable worker-to-head syncing; an
    error with an upload_dir), a ``Syncer`` instance, or ``"package.module:Class"``.
    ``sync_period``: minimum seconds between two periodic syncs (scenarios 1 and 3).
    ``sync_timeout``: seconds after which a sync is cancelled and retried (scenarios 1, 2).
    ``sync_artifacts``: also sync trial-dir files that are not checkpoints (scenario 4).
    ``sync_on_checkpoint``: force a worker-to-head sync on every checkpoint (scenario 3).
    """

    upload_dir: str | None = None
    syncer: SyncerSpec = "auto"
    sync_period: float = DEFAULT_SYNC_PERIOD
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT
    sync_artifacts: bool = True
    sync_on_checkpoint: bool = True

    def validate_upload_dir(self) -> bool:
        """Return True if this configuration can sync, else raise ValueError saying why.

        Checks the upload_dir URI (scheme known, backend installed, well formed), that the
        syncer fits it, and that the period and timeout are positive.
        """
        _require_positive("sync_period", self.sync_period)
        _require_positive("sync_timeout", self.sync_timeout)
        if not self.upload_dir:
            return True
        if self.syncer is None:
            raise ValueError(
                "syncer=None disables syncing, which contradicts upload_dir="
                f"{self.upload_dir!r}: remove upload_dir, or set syncer to 'auto'"
            )
        validate_uri(self.upload_dir)
        if not isinstance(self.syncer, str):
            return self.syncer.validate_upload_dir(self.upload_dir)
        return True


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def validate_uri(uri: str) -> None:
    """Raise ValueError unless ``uri`` names a storage location fsspec can write to here."""
    if not isinstance(uri, str) or uri != uri.strip() or not uri:
        raise ValueError(f"upload_dir must be a non-empty URI without spaces, got {uri!r}")
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme or "/" in scheme:
        raise ValueError(
            f"upload_dir {uri!r} has no scheme (scheme://...): use s3://bucket/prefix, "
            "gs://bucket/prefix, hdfs://namenode/path or file:///absolute/path"
        )
    scheme = scheme.lower()
    if scheme not in known_implementations and scheme not in fsspec.available_protocols():
        raise ValueError(
            f"upload_dir {uri!r} has an unknown scheme {scheme!r}; fsspec knows "
            f"{', '.join(sorted(('s3', 'gs', 'gcs', 'hdfs', 'file', 'memory')))} and others"
        )
    if scheme in _BUCKET_SCHEMES:
        bucket = rest.split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"upload_dir {uri!r} has no valid bucket name (3-222 lowercase letters, "
                "digits, '.', '_' or '-') after the scheme"
            )
    elif scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"upload_dir {uri!r} must be an absolute path: file:///abs/path")
    elif scheme == "hdfs" and not rest.strip("/"):
        raise ValueError(f"upload_dir {uri!r} names no path: hdfs://namenode:8020/path")
    if "//" in rest.lstrip("/"):
        raise ValueError(f"upload_dir {uri!r} has an empty path segment ('//')")
    package = _EXTRA_FOR.get(scheme)
    try:
        fsspec.get_filesystem_class(scheme)
        # Some fsspec classes import their client only when instantiated (HDFS: pyarrow).
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"No module named {package!r}")
    except ImportError as exc:
        raise ValueError(
            f"upload_dir {uri!r} needs {package or 'the fsspec backend for ' + scheme}, "
            f"which is not installed ({exc})"
        ) from exc
