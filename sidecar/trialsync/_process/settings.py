"""The one place where the sidecar's configuration is parsed and validated.

Each setting (its flag, its ``TRIALSYNC_*`` variable, its default and its check) is
defined in ``trialsync.contract``, which the operator reads too: the sidecar refuses what
the operator refuses, with the same message. A flag on the command line wins over the
environment. A misspelled flag is fatal, and a bad value is a configuration error, naming
where it came from, before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trialsync import contract
from trialsync._engine.layout import Layout
from trialsync._util import tls
from trialsync.config import SyncConfig
from trialsync.contract import Duty, Mode, Role, SettingError

C = contract


class ConfigError(ValueError):
    """The configuration is invalid; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
    root: str
    config: SyncConfig
    role: str = C.ROLE.default
    head_url: str | None = None
    #: The certificate an https head_url is checked against (None: the system's).
    head_ca_file: str | None = None
    #: The head's serving certificate and key: the head-node service serves TLS.
    receiver_cert_file: str | None = None
    receiver_key_file: str | None = None
    # The head-node service (role head, no upload dir) and a worker's identity with it.
    receiver_max_object_size: int = C.RECEIVER_MAX_OBJECT_SIZE.default
    receiver_max_uploads: int = C.RECEIVER_MAX_UPLOADS.default
    receiver_claim_lease: float = C.RECEIVER_CLAIM_LEASE.default
    receiver_state_dir: str = ""  # "" = <root>/contract.HEAD_STATE_DIR
    head_identity_file: str = C.HEAD_IDENTITY_FILE.default
    head_token: str = ""
    receiver_addr: str = C.RECEIVER_ADDR.default
    layout: Layout = dataclasses.field(default_factory=Layout)
    checkpoint_settle: float = C.CHECKPOINT_SETTLE.default
    once: bool = C.ONCE.default
    final_sync_timeout: float = C.FINAL_SYNC_TIMEOUT.default
    mirror_deletes: bool = C.MIRROR_DELETES.default
    keep_checkpoints: int | None = C.KEEP_CHECKPOINTS.default
    bandwidth_limit: int | None = C.BANDWIDTH_LIMIT.default
    restore: bool = C.RESTORE.default
    restore_timeout: int = C.RESTORE_TIMEOUT.default
    restore_key: str | None = C.RESTORE_KEY.default
    restore_prefix: str | None = C.RESTORE_PREFIX.default
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    s3_client: str = C.S3_CLIENT.default
    credentials_dir: str = C.CREDENTIALS_DIR.default
    http_addr: str = C.HTTP_ADDR.default
    files_in_flight: int = C.FILES_IN_FLIGHT.default
    part_size: int = C.PART_SIZE.default
    upload_memory: int = C.UPLOAD_MEMORY.default
    share_files: bool = C.SHARE_FILES.default
    create_root: bool = C.CREATE_ROOT.default
    reconcile_interval: float = C.RECONCILE_INTERVAL.default
    poll_interval: float = C.POLL_INTERVAL.default
    max_backoff: float = C.MAX_BACKOFF.default
    log_level: str = C.LOG_LEVEL.default

    @property
    def mode(self) -> Mode:
        return contract.mode_of(self.config.upload_dir, self.config.syncer)

    @property
    def duty(self) -> Duty:
        """What this sidecar does: upload, send to the head, receive as the head, or idle."""
        return contract.duty_of(self.mode, Role(self.role))


#: The flag of the one setting whose flag is not its name: ``--storage-option K=V``,
#: repeatable, over the JSON object of ``TRIALSYNC_STORAGE_OPTIONS``.
STORAGE_OPTION_FLAG = "--storage-option"


def _flag(setting: contract.Setting[Any]) -> str:
    return STORAGE_OPTION_FLAG if setting is C.STORAGE_OPTIONS else setting.flag


def _dest(setting: contract.Setting[Any]) -> str:
    return _flag(setting)[2:].replace("-", "_")


def _help(setting: contract.Setting[Any]) -> str:
    default = setting.default
    if isinstance(setting, contract.Choice):
        return f"{setting.help}: {', '.join(setting.choices)} (default {default})"
    if isinstance(setting, contract.Flag) or default in (None, (), {}):
        return setting.help
    if isinstance(default, int) and default >= 2**20 and default % 2**20 == 0:
        return f"{setting.help} (default {default // 2**20} MiB)"
    return (
        f"{setting.help} (default {default:g})"
        if isinstance(default, float)
        else (f"{setting.help} (default {default})")
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trialsync sync",
        description="Sync a Ray storage path (<experiment>/<trial>/checkpoint_N/) to storage. "
        "Every flag falls back to its TRIALSYNC_* variable (--sync-period: "
        "TRIALSYNC_SYNC_PERIOD).",
        allow_abbrev=False,
    )
    for setting in C.SETTINGS:
        if isinstance(setting, contract.Flag):
            p.add_argument(setting.flag, action=argparse.BooleanOptionalAction, help=_help(setting))
        elif setting is C.EXCLUDE or setting is C.STORAGE_OPTIONS:
            metavar = "KEY=VALUE" if setting is C.STORAGE_OPTIONS else "GLOB"
            p.add_argument(
                _flag(setting),
                action="append",
                metavar=metavar,
                help=_help(setting) + " (repeatable)",
            )
        else:
            p.add_argument(setting.flag, metavar=setting.name.upper(), help=_help(setting))
    return p


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build Settings from flags, then ``TRIALSYNC_*`` variables, then the defaults."""
    args = vars(parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    for setting in C.SETTINGS:
        given = args[_dest(setting)]
        raw = environ.get(setting.env)
        try:
            if setting is C.STORAGE_OPTIONS:
                values[setting.name] = _storage_options(given or [], raw)
            elif setting is C.UPLOAD_DIR:
                # Checked with the other seed fields, in validate_upload_dir's order.
                values[setting.name] = given if given is not None else raw
            elif given is not None:
                values[setting.name] = _from_flag(setting, given)
            elif raw is not None and raw != "":
                values[setting.name] = _from_env(setting, raw)
        except SettingError as exc:
            raise ConfigError(str(exc)) from None
    return _build(values, environ)


def _from_flag(setting: contract.Setting[Any], given: Any) -> Any:
    try:
        return setting.parse(given) if isinstance(given, str) else setting.check(given)
    except SettingError as exc:
        raise SettingError(f"{_flag(setting)}: {exc}") from None


def _from_env(setting: contract.Setting[Any], raw: str) -> Any:
    try:
        return setting.parse(raw)
    except SettingError as exc:
        raise SettingError(f"{setting.env}: {exc}") from None


def _storage_options(pairs: Sequence[str], raw: str | None) -> dict[str, Any]:
    """``TRIALSYNC_STORAGE_OPTIONS`` (a JSON object), then each ``--storage-option K=V``
    over it (V parsed as JSON when it is JSON): a flag wins over the environment per key."""
    options = _from_env(C.STORAGE_OPTIONS, raw) if raw else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingError(f"{STORAGE_OPTION_FLAG} {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return _from_flag(C.STORAGE_OPTIONS, options) if pairs else dict(options)


def _build(values: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    root = values.pop("root", None)
    if not root:
        raise ConfigError("--root (or TRIALSYNC_ROOT) is required: the trial data directory")
    if not os.path.isdir(root) and not (values.get("create_root") and not os.path.exists(root)):
        raise ConfigError(f"--root {root!r} is not a directory")
    root = os.path.abspath(root)
    upload_dir = values.pop("upload_dir", None) or None
    head_url = values.pop("head_url", None) or None
    if upload_dir and head_url:
        raise ConfigError("give --upload-dir or --head-url, not both")
    syncer = values.pop("syncer", C.SYNCER.default)
    config = SyncConfig(
        upload_dir=upload_dir,
        syncer=None if syncer == "none" else syncer,
        sync_period=values.pop("sync_period", C.SYNC_PERIOD.default),
        sync_timeout=values.pop("sync_timeout", C.SYNC_TIMEOUT.default),
        sync_artifacts=values.pop("sync_artifacts", C.SYNC_ARTIFACTS.default),
        sync_on_checkpoint=values.pop("sync_on_checkpoint", C.SYNC_ON_CHECKPOINT.default),
    )
    try:
        config.validate_upload_dir()
        contract.check_mirror_deletes(values.get("mirror_deletes", False), syncer)
        contract.check_keep_checkpoints(values.get("keep_checkpoints"), syncer)
        contract.check_restore(values.get("restore", False), syncer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    role = values.pop("role", C.ROLE.default)
    duty = contract.duty_of(contract.mode_of(upload_dir, syncer), Role(role))
    if head_url and duty is not Duty.SEND:
        raise ConfigError("--head-url is for workers; the head serves on --receiver-addr")
    if duty is Duty.SEND and not head_url:
        raise ConfigError(
            "a worker needs --upload-dir (cloud syncing) or --head-url (syncing to the head "
            "node's service); --syncer none disables syncing"
        )
    if values.get("restore_key") and values.get("restore_prefix") is not None:
        raise ConfigError(
            "give --restore-key (restore the trials recorded under it) or --restore-prefix "
            "(restore every trial below a path), not both"
        )
    prefix = values.get("restore_prefix")
    if prefix is not None:
        values["restore_prefix"] = _relative_prefix(prefix)
    for name in ("head_ca_file", "receiver_cert_file", "receiver_key_file"):
        values[name] = values.get(name) or None
    _check_head_tls(values, duty, head_url)
    token_file = values.pop("head_token_file", None)
    head_token = _head_token(token_file, environ) if duty in (Duty.SEND, Duty.RECEIVE) else ""
    layout = Layout(
        checkpoint_pattern=values.pop("checkpoint_pattern", C.CHECKPOINT_PATTERN.default),
        excludes=values.pop("exclude", C.EXCLUDE.default),
    )
    state_dir = values.pop("receiver_state_dir", None) or os.path.join(
        root, contract.HEAD_STATE_DIR
    )
    identity = os.path.abspath(values.pop("head_identity_file", C.HEAD_IDENTITY_FILE.default))
    if duty is Duty.SEND and identity.startswith(root + os.sep):
        raise ConfigError(
            f"--head-identity-file {identity!r} is inside --root, so it would be synced with "
            "the trial data: keep it in the sidecar's own scratch dir"
        )
    return Settings(
        root=root,
        config=config,
        role=role,
        head_url=head_url,
        head_token=head_token,
        layout=layout,
        receiver_state_dir=os.path.abspath(state_dir),
        head_identity_file=identity,
        **values,
    )


def _check_head_tls(values: Mapping[str, Any], duty: Duty, head_url: str | None) -> None:
    """The head-node service's TLS settings fit the duty, and their files load."""
    if head_url is not None and not head_url.startswith(("https://", "http://")):
        raise ConfigError(f"--head-url {head_url!r} must start with https:// (or http://)")
    ca_file = values.get("head_ca_file")
    if ca_file:
        if duty is not Duty.SEND or not (head_url or "").startswith("https://"):
            raise ConfigError(
                "--head-ca-file is for a worker whose --head-url is https://: the certificate "
                "the head must prove it holds"
            )
        try:
            tls.client_context(ca_file)
        except ValueError as exc:
            raise ConfigError(f"--head-ca-file: {exc}") from exc
    cert, key = values.get("receiver_cert_file"), values.get("receiver_key_file")
    if not cert and not key:
        return
    if duty is not Duty.RECEIVE:
        raise ConfigError(
            "--receiver-cert-file and --receiver-key-file are for the head serving the "
            "head-node service (--role head, no upload dir)"
        )
    if not cert or not key:
        raise ConfigError("give both --receiver-cert-file and --receiver-key-file, or neither")
    try:
        tls.server_context(cert, key)
    except ValueError as exc:
        raise ConfigError(f"--receiver-cert-file/--receiver-key-file: {exc}") from exc


def _relative_prefix(prefix: str) -> str:
    """``--restore-prefix`` as a path relative to the upload dir (a leading or trailing
    '/' is dropped; nothing left, '.', '..', '//' or ':' is refused)."""
    clean = prefix.strip("/")
    try:
        contract.check_restore_prefix(clean)
    except SettingError as exc:
        raise ConfigError(f"--restore-prefix {prefix!r:.200} {exc}") from exc
    return clean


def _head_token(path: str | None, environ: Mapping[str, str]) -> str:
    """The shared token of the head-node service: from a file (a mounted Secret) or env."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"--head-token-file {path!r}: {exc.strerror}") from exc
    else:
        token = environ.get(contract.HEAD_TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            "syncing with the head node needs a token: --head-token-file or "
            f"{contract.HEAD_TOKEN_ENV}"
        )
    return token


#: What the kubelet sets for each Service of the pod's namespace (service links): a head
#: Service ``trialsync-head-<name>`` gives ``TRIALSYNC_HEAD_<NAME>_SERVICE_HOST`` and more.
_SERVICE_LINK = re.compile(
    r".+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)?)"
)


def unknown_env(environ: Mapping[str, str], also_known: set[str]) -> list[str]:
    """``TRIALSYNC_*`` variables that match no setting: likely typos (not the kubelet's
    service links)."""
    known = contract.known_env() | also_known
    return sorted(
        k
        for k in environ
        if k.startswith(contract.ENV_PREFIX) and k not in known and not _SERVICE_LINK.fullmatch(k)
    )
