"""The one place where the sidecar's configuration is parsed and validated.

Every flag has an environment fallback: ``--sync-period`` reads ``TRIALSYNC_SYNC_PERIOD``.
A flag on the command line wins over the environment. A misspelled flag is fatal, and a
bad value is a configuration error before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trialsync import defaults
from trialsync._engine.layout import Layout
from trialsync.config import DEFAULT_SYNC_PERIOD as SYNC_PERIOD
from trialsync.config import DEFAULT_SYNC_TIMEOUT as SYNC_TIMEOUT
from trialsync.config import SyncConfig

ENV_PREFIX = "TRIALSYNC_"
S3_MIN_PART_SIZE = 5 * 2**20  # S3 refuses smaller parts (but the last)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """The configuration is invalid; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
    root: str
    config: SyncConfig
    role: str = defaults.ROLE
    head_url: str | None = None
    # The head-node service (role head, no upload dir) and a worker's identity with it.
    receiver_max_object_size: int = defaults.RECEIVER_MAX_OBJECT_SIZE
    receiver_max_uploads: int = defaults.RECEIVER_MAX_UPLOADS
    receiver_claim_lease: float = defaults.RECEIVER_CLAIM_LEASE
    receiver_state_dir: str = ""  # "" = <root>/defaults.RECEIVER_STATE_DIR
    head_identity_file: str = defaults.HEAD_IDENTITY_FILE
    head_token: str = ""
    receiver_addr: str = defaults.RECEIVER_ADDR
    layout: Layout = dataclasses.field(default_factory=Layout)
    checkpoint_settle: float = defaults.CHECKPOINT_SETTLE
    once: bool = False
    final_sync_timeout: float = defaults.FINAL_SYNC_TIMEOUT
    mirror_deletes: bool = False
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    s3_client: str = defaults.S3_CLIENT
    http_addr: str = defaults.HTTP_ADDR
    files_in_flight: int = defaults.FILES_IN_FLIGHT
    part_size: int = defaults.PART_SIZE
    upload_memory: int = defaults.UPLOAD_MEMORY
    reconcile_interval: float = defaults.RECONCILE_INTERVAL
    poll_interval: float = defaults.POLL_INTERVAL
    max_backoff: float = defaults.MAX_BACKOFF
    log_level: str = defaults.LOG_LEVEL


def _n(value: float) -> str:
    return f"{value:g}"


def _mib(size: int) -> str:
    return f"{size // 2**20} MiB"


def _parser() -> argparse.ArgumentParser:
    d = defaults
    p = argparse.ArgumentParser(
        prog="trialsync sync",
        description="Sync a Ray storage path (<experiment>/<trial>/checkpoint_N/) to storage.",
        allow_abbrev=False,
    )
    a = p.add_argument
    a("--root", help="local dir holding <experiment>/<trial>/... (required)")
    a("--upload-dir", help="URI to mirror the root under: s3://, gs://, hdfs://, file://, ...")
    a("--head-url", help="head-node service URL (worker-to-head sync, no upload dir)")
    _head_service_flags(a)
    a(
        "--head-token-file",
        help="file holding the head-node service token (or TRIALSYNC_HEAD_TOKEN)",
    )
    a("--receiver-addr", help=f"host:port the head serves workers on (default {d.RECEIVER_ADDR})")
    a("--role", choices=["worker", "head"], help=f"worker or head (default {d.ROLE})")
    a(
        "--sync-period",
        type=float,
        help=f"seconds between periodic syncs (default {_n(SYNC_PERIOD)})",
    )
    a(
        "--sync-timeout",
        type=float,
        help=f"seconds before a sync is cancelled (default {_n(SYNC_TIMEOUT)})",
    )
    a("--sync-artifacts", action=argparse.BooleanOptionalAction, help="default true")
    a("--sync-on-checkpoint", action=argparse.BooleanOptionalAction, help="default true")
    a("--syncer", help="auto (default), none, or package.module:Class")
    a(
        "--checkpoint-pattern",
        help=f"glob for checkpoint dirs (default {d.CHECKPOINT_PATTERN})",
    )
    a("--exclude", action="append", help="glob of root-relative paths to skip (repeatable)")
    a(
        "--checkpoint-settle",
        type=float,
        help=f"seconds without change = complete (default {_n(d.CHECKPOINT_SETTLE)})",
    )
    a("--once", action=argparse.BooleanOptionalAction, help="sync everything once, then exit")
    a(
        "--final-sync-timeout",
        type=float,
        help="seconds for everything after SIGTERM: the final sync, then aborting its "
        f"cancelled uploads (default {_n(d.FINAL_SYNC_TIMEOUT)})",
    )
    a("--mirror-deletes", action=argparse.BooleanOptionalAction, help="delete remote copies")
    a("--storage-option", action="append", help="KEY=VALUE for the fsspec backend (repeatable)")
    a(
        "--s3-client",
        choices=["auto", "botocore"],
        help=f"auto: trialsync's lean S3 client unless a storage option needs "
        f"botocore; botocore: always s3fs/botocore (default {d.S3_CLIENT})",
    )
    a(
        "--http-addr",
        help=f"host:port for /healthz, /readyz, /metrics, POST /sync (default {d.HTTP_ADDR})",
    )
    a("--files-in-flight", type=int, help=f"concurrent file uploads (default {d.FILES_IN_FLIGHT})")
    a("--part-size", type=int, help=f"multipart part size in bytes (default {_mib(d.PART_SIZE)})")
    a(
        "--upload-memory",
        type=int,
        help=f"bytes of upload buffers at most (default {_mib(d.UPLOAD_MEMORY)})",
    )
    a(
        "--reconcile-interval",
        type=float,
        help=f"seconds between ledger rebuilds, 0 = never (default {_n(d.RECONCILE_INTERVAL)})",
    )
    a(
        "--poll-interval",
        type=float,
        help=f"seconds between scans without inotify (default {_n(d.POLL_INTERVAL)})",
    )
    a(
        "--max-backoff",
        type=float,
        help=f"cap on the retry backoff in seconds (default {_n(d.MAX_BACKOFF)})",
    )
    a("--log-level", choices=["debug", "info", "warning", "error"], help=f"default {d.LOG_LEVEL}")
    return p


def _head_service_flags(a: Callable[..., Any]) -> None:
    """Flags of the head-node service, and of a worker's identity with it."""
    d = defaults
    a(
        "--head-identity-file",
        help=f"where a worker keeps its identity (default {d.HEAD_IDENTITY_FILE})",
    )
    a(
        "--receiver-max-object-size",
        type=int,
        help="bytes of the largest object the head accepts "
        f"(default {d.RECEIVER_MAX_OBJECT_SIZE // 2**30} GiB)",
    )
    a(
        "--receiver-max-uploads",
        type=int,
        help=f"uploads the head takes at once (default {d.RECEIVER_MAX_UPLOADS})",
    )
    a(
        "--receiver-claim-lease",
        type=float,
        help="seconds without a write after which another worker may take a trial dir over "
        f"(default {_n(d.RECEIVER_CLAIM_LEASE)})",
    )
    a(
        "--receiver-state-dir",
        help=f"the head's key and claims (default <root>/{d.RECEIVER_STATE_DIR})",
    )


def env_name(dest: str) -> str:
    """The variable a flag falls back to: ``--sync-period`` reads ``TRIALSYNC_SYNC_PERIOD``.

    The one exception: the repeatable ``--storage-option K=V`` reads one JSON object,
    ``TRIALSYNC_STORAGE_OPTIONS``.
    """
    return ENV_PREFIX + _ENV_NAMES.get(dest, dest.upper())


_ENV_NAMES = {"storage_option": "STORAGE_OPTIONS"}


def known_env_names() -> set[str]:
    return {env_name(dest) for dest in _flag_names()} | {ENV_PREFIX + "HEAD_TOKEN"}


def _flag_names() -> list[str]:
    return [a.dest for a in _parser()._actions if a.dest != "help"]


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build Settings from flags, then ``TRIALSYNC_*`` env vars, then defaults."""
    args = vars(_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    for dest, given in args.items():
        if given is not None:
            values[dest] = given
            continue
        raw = environ.get(env_name(dest))
        if raw is not None and raw != "" and dest != "storage_option":
            values[dest] = _from_env(dest, raw)
    return _build(values, environ)


def _from_env(dest: str, raw: str) -> Any:
    name = env_name(dest)
    action = next(a for a in _parser()._actions if a.dest == dest)
    if isinstance(action, argparse.BooleanOptionalAction):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false")
    if action.type in (float, int):
        try:
            return action.type(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: expected a number") from exc
    if action.choices is not None and raw not in action.choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(action.choices)}")
    if dest == "exclude":
        return [part for part in raw.split(",") if part]
    return raw


def _storage_options(pairs: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any]:
    """``TRIALSYNC_STORAGE_OPTIONS`` (a JSON object), then each ``--storage-option K=V``
    over it (V parsed as JSON when it is JSON): a flag wins over the environment per key."""
    options: dict[str, Any] = {}
    raw = environ.get(ENV_PREFIX + "STORAGE_OPTIONS")
    if raw:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TRIALSYNC_STORAGE_OPTIONS is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("TRIALSYNC_STORAGE_OPTIONS must be a JSON object")
        options.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _build(values: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    root = values.get("root")
    if not root:
        raise ConfigError("--root (or TRIALSYNC_ROOT) is required: the trial data directory")
    if not os.path.isdir(root):
        raise ConfigError(f"--root {root!r} is not a directory")
    config = _seed_config(values)
    role = values.get("role", defaults.ROLE)
    head_url = values.get("head_url") or None
    _check_role(config, role, head_url)
    head_token = ""
    if not config.upload_dir and config.syncer is not None:
        head_token = _head_token(values.get("head_token_file"), environ)
    _check_values(values, config)
    layout = Layout(
        checkpoint_pattern=values.get("checkpoint_pattern", defaults.CHECKPOINT_PATTERN),
        excludes=tuple(values.get("exclude", ())),
    )
    return Settings(
        root=os.path.abspath(root),
        config=config,
        role=role,
        head_url=head_url,
        head_token=head_token,
        layout=layout,
        storage_options=_storage_options(values.get("storage_option", []), environ),
        **{name: values[name] for name in _PLAIN if name in values},
        **_head_service(os.path.abspath(root), values),
    )


# Settings taken as given once ``_check_values`` accepts them.
_PLAIN = (
    "checkpoint_settle",
    "once",
    "final_sync_timeout",
    "mirror_deletes",
    "http_addr",
    "files_in_flight",
    "part_size",
    "upload_memory",
    "reconcile_interval",
    "poll_interval",
    "max_backoff",
    "log_level",
    "receiver_addr",
    "s3_client",
)


def _seed_config(values: Mapping[str, Any]) -> SyncConfig:
    """The seed's six fields, validated as ``SyncConfig.validate_upload_dir`` does."""
    syncer: str | None = values.get("syncer", SyncConfig.syncer)
    upload_dir = values.get("upload_dir") or None
    if upload_dir and values.get("head_url"):
        raise ConfigError("give --upload-dir or --head-url, not both")
    config = SyncConfig(
        upload_dir=upload_dir,
        syncer=None if syncer == "none" else syncer,
        sync_period=values.get("sync_period", SyncConfig.sync_period),
        sync_timeout=values.get("sync_timeout", SyncConfig.sync_timeout),
        sync_artifacts=values.get("sync_artifacts", SyncConfig.sync_artifacts),
        sync_on_checkpoint=values.get("sync_on_checkpoint", SyncConfig.sync_on_checkpoint),
    )
    try:
        config.validate_upload_dir()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return config


def _check_role(config: SyncConfig, role: str, head_url: str | None) -> None:
    """Where this role syncs to: a worker needs an upload dir or the head-node service."""
    if head_url and role == "head":
        raise ConfigError("--head-url is for workers; the head serves on --receiver-addr")
    if not config.upload_dir and config.syncer is not None and role == "worker" and not head_url:
        raise ConfigError(
            "a worker needs --upload-dir (cloud syncing) or --head-url (syncing to the head "
            "node's service); --syncer none disables syncing"
        )


def _check_values(values: Mapping[str, Any], config: SyncConfig) -> None:
    """Durations, addresses and sizes: each a clear error naming its flag."""
    for name in ("checkpoint_settle", "final_sync_timeout", "poll_interval", "max_backoff"):
        if name in values and not _positive_seconds(values[name]):
            raise ConfigError(f"--{_flag(name)} must be a positive number of seconds")
    interval = values.get("reconcile_interval", 0)
    if interval != 0 and not _positive_seconds(interval):
        raise ConfigError("--reconcile-interval must be positive, or 0 to never reconcile")
    for name in ("http_addr", "receiver_addr"):
        if name in values:
            _check_addr(f"--{_flag(name)}", values[name])
    if values.get("mirror_deletes") and config.syncer not in (None, "auto"):
        raise ConfigError("--mirror-deletes needs the default syncer: a Syncer cannot list")
    for name in ("files_in_flight", "part_size", "upload_memory"):
        if name in values and values[name] < 1:
            raise ConfigError(f"--{_flag(name)} must be at least 1")
    if values.get("part_size", defaults.PART_SIZE) < S3_MIN_PART_SIZE:
        raise ConfigError("--part-size must be at least 5 MiB (the S3 minimum part size)")


def _positive_seconds(value: float) -> bool:
    """Positive and finite: NaN and infinity are no durations."""
    return math.isfinite(value) and value > 0


def _flag(dest: str) -> str:
    return dest.replace("_", "-")


def _head_service(root: str, values: dict[str, Any]) -> dict[str, Any]:
    """Settings of the head-node service and of a worker's identity with it, validated."""
    for name in ("receiver_max_object_size", "receiver_max_uploads"):
        if name in values and values[name] < 1:
            raise ConfigError(f"--{_flag(name)} must be at least 1")
    if "receiver_claim_lease" in values and not _positive_seconds(values["receiver_claim_lease"]):
        raise ConfigError("--receiver-claim-lease must be a positive number of seconds")
    state_dir = values.get("receiver_state_dir") or os.path.join(root, defaults.RECEIVER_STATE_DIR)
    identity = os.path.abspath(values.get("head_identity_file") or Settings.head_identity_file)
    if values.get("head_url") and identity.startswith(root + os.sep):
        raise ConfigError(
            f"--head-identity-file {identity!r} is inside --root, so it would be synced with "
            "the trial data: keep it in the sidecar's own scratch dir"
        )
    limits = ("receiver_max_object_size", "receiver_max_uploads", "receiver_claim_lease")
    return {
        **{name: values[name] for name in limits if name in values},
        "receiver_state_dir": os.path.abspath(state_dir),
        "head_identity_file": identity,
    }


def _check_addr(flag: str, addr: str) -> None:
    _host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {addr!r}: expected HOST:PORT, e.g. 0.0.0.0:9746")


def _head_token(path: str | None, environ: Mapping[str, str]) -> str:
    """The shared token of the head-node service: from a file (a mounted Secret) or env."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"--head-token-file {path!r}: {exc.strerror}") from exc
    else:
        token = environ.get(ENV_PREFIX + "HEAD_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            "syncing with the head node needs a token: --head-token-file or TRIALSYNC_HEAD_TOKEN"
        )
    return token


def unknown_env(environ: Mapping[str, str], also_known: set[str]) -> list[str]:
    """``TRIALSYNC_*`` variables that match no setting: likely typos."""
    known = known_env_names() | also_known
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
