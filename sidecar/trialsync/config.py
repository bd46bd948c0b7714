"""The seed's SyncConfig: fields, defaults and validation, as Ray Tune defines them.

This module is the seed model alone: it imports no storage client, so the operator can
validate SyncConfigs without loading fsspec. Which storage backends can serve an upload
dir is asked of a ``BackendCheck``: by default the fsspec backends installed in this
Python (``installed_backend``); the operator asks what its sidecar image serves instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from trialsync.syncer import Syncer

SyncerSpec = Union[str, "Syncer", None]
#: Raises ValueError (saying what to fix) unless ``uri``, of scheme ``scheme``, can be served.
BackendCheck = Callable[[str, str], None]

DEFAULT_SYNC_PERIOD = 300
DEFAULT_SYNC_TIMEOUT = 1800

# Bucket names as S3 and GCS accept them (GCS also allows dots and underscores).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_BUCKET_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
#: What counts as a leading or trailing space: Unicode's White_Space, as the CRD's CEL
#: ``trim()`` has it (Python's own ``strip()`` also strips U+001C-U+001F).
_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: The Python package each scheme's fsspec backend needs, for the users' most common ones.
PACKAGE_FOR = {
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
    ``syncer``: ``"auto"`` (the fsspec syncer), None or ``"none"`` (disable worker-to-head
    syncing; an error with an upload_dir), a ``Syncer`` instance or
    ``"package.module:Class"`` (a custom syncer: an error without an upload_dir).
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

    def validate_upload_dir(
        self, upload_dir: str | None = None, *, backend: BackendCheck | None = None
    ) -> bool:
        """Return True if this configuration can sync, else raise ValueError saying why.

        Checks the upload_dir URI (scheme known, backend available, well formed), that the
        syncer fits it (None contradicts an upload_dir, a custom syncer needs one, as in
        Ray), and that the period and timeout are positive. ``upload_dir``: the path to
        validate, as in Ray (default: this config's). ``backend`` says which storage
        backends exist; by default, those installed in this Python.
        """
        upload_dir = upload_dir or self.upload_dir
        _require_positive("sync_period", self.sync_period)
        _require_positive("sync_timeout", self.sync_timeout)
        if isinstance(self.syncer, str):
            validate_syncer_name(self.syncer)
        if not upload_dir:
            if self.syncer is not None and self.syncer not in ("auto", "none"):
                raise ValueError(
                    f"syncer {_syncer_name(self.syncer)} is a custom Syncer, which needs an "
                    "upload_dir to sync to: set upload_dir, or use syncer 'auto' (sync to the "
                    "head node) or None (no syncing)"
                )
            return True
        if self.syncer is None or self.syncer == "none":
            raise ValueError(
                "syncer=None disables syncing, which contradicts upload_dir="
                f"{quoted(upload_dir)}: remove upload_dir, or set syncer to 'auto'"
            )
        validate_uri(upload_dir, backend)
        if not isinstance(self.syncer, str):
            return self.syncer.validate_upload_dir(upload_dir)
        return True


def _syncer_name(syncer: SyncerSpec) -> str:
    return quoted(syncer) if isinstance(syncer, str) else type(syncer).__name__


def quoted(value: str) -> str:
    """A value in a message, quoted as the SyncConfig CRD's CEL rules quote it, so the
    apiserver refuses what these functions refuse with the very same message: backslashes
    doubled, line breaks (which its messages cannot hold) written as ``\\n``."""
    return "'" + value.replace("\\", "\\\\").replace("\n", "\\n") + "'"


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


def validate_syncer_name(syncer: str) -> None:
    """Raise ValueError unless ``syncer`` is ``auto``, ``none`` or ``package.module:Class``."""
    if syncer in ("auto", "none"):
        return
    module, sep, name = syncer.partition(":")
    if (
        not sep
        or not syncer.isascii()
        or not name.isidentifier()
        or not all(part.isidentifier() for part in module.split("."))
    ):
        raise ValueError(
            f"syncer {quoted(syncer)} must be 'auto', 'none' or 'package.module:Class' "
            "(a trialsync.Syncer subclass shipped in a custom sidecar image)"
        )


def validate_uri(uri: str, backend: BackendCheck | None = None) -> None:
    """Raise ValueError unless ``uri`` names a storage location a backend can write to.

    ``backend`` decides which schemes can be served (default: ``installed_backend``).
    """
    if not isinstance(uri, str) or uri != uri.strip(_SPACES) or not uri:
        raise ValueError(
            "upload_dir must be a non-empty URI without leading or trailing spaces, got "
            f"{quoted(uri) if isinstance(uri, str) else repr(uri)}"
        )
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(
            f"upload_dir {quoted(uri)} has no scheme (scheme://...): use s3://bucket/prefix, "
            "gs://bucket/prefix, hdfs://namenode/path or file:///absolute/path"
        )
    scheme = scheme.lower()
    if scheme in _BUCKET_SCHEMES:
        bucket = rest.split("/", 1)[0]
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(
                f"upload_dir {quoted(uri)} has no valid bucket name (3-222 lowercase letters, "
                "digits, '.', '_' or '-') after the scheme"
            )
    elif scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"upload_dir {quoted(uri)} must be an absolute path: file:///abs/path")
    elif scheme == "hdfs" and not rest.strip("/"):
        raise ValueError(f"upload_dir {quoted(uri)} names no path: hdfs://namenode:8020/path")
    if "//" in rest.lstrip("/"):
        raise ValueError(f"upload_dir {quoted(uri)} has an empty path segment ('//')")
    (backend or installed_backend)(scheme, uri)


def installed_backend(scheme: str, uri: str) -> None:
    """A ``BackendCheck``: the fsspec backends installed in this Python (imported lazily)."""
    import fsspec
    from fsspec.registry import known_implementations

    if scheme not in known_implementations and scheme not in fsspec.available_protocols():
        raise ValueError(
            f"upload_dir {quoted(uri)} has an unknown scheme {quoted(scheme)}; fsspec knows "
            f"{', '.join(sorted(('s3', 'gs', 'gcs', 'hdfs', 'file', 'memory')))} and others"
        )
    package = PACKAGE_FOR.get(scheme)
    try:
        fsspec.get_filesystem_class(scheme)
        # Some fsspec classes import their client only when instantiated (HDFS: pyarrow).
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"No module named {package!r}")
    except ImportError as exc:
        raise ValueError(
            f"upload_dir {quoted(uri)} needs {package or 'the fsspec backend for ' + scheme}, "
            f"which is not installed ({exc})"
        ) from exc
