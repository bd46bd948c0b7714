"""The contract between the operator and the sidecar: every setting that crosses, once.

The operator turns a SyncConfig and a pod into the sidecar's environment; the sidecar
parses that environment back into its settings (docs/architecture.md, "The path of a
setting"). Both import this module, which states once:

- the ports and paths of the injected container;
- the modes a SyncConfig puts its pods in, the roles, and what a sidecar does in each;
- every setting of the sidecar: its ``TRIALSYNC_*`` variable and flag, its default, the
  SyncConfig field it comes from where one does, and its check. A check's message is
  the same whoever asks: the operator's webhook, the sidecar's parser, the seed's
  ``validate_upload_dir``, and the CRD's CEL rules, which ``cel_rules`` writes out and
  ``tests/unit/test_contract.py`` finds in ``crds/syncconfig.yaml``;
- the checks across settings: the seed's ``upload_dir`` with its ``syncer``,
  ``mirror_deletes`` and ``restore``.

It imports the standard library only, so the operator and every sidecar load it for
nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from trialsync.setting_kinds import (
    ENV_PREFIX,
    Address,
    ByteRate,
    Cel,
    CelRule,
    Choice,
    Count,
    Flag,
    Globs,
    OptionalCount,
    Seconds,
    Setting,
    SettingError,
    Text,
    WholeSeconds,
    at_most,
    cel_quoted,
    quoted,
    shown,
)

__all__ = [
    "ENV_PREFIX",
    "Address",
    "Cel",
    "CelRule",
    "Choice",
    "Count",
    "Flag",
    "Globs",
    "Seconds",
    "Setting",
    "SettingError",
    "Text",
    "WholeSeconds",
    "cel_quoted",
    "quoted",
    "shown",
]

# -- the container ---------------------------------------------------------------------

#: The sidecar's health, readiness, metrics and trigger endpoints.
HTTP_PORT = 9746
#: The head-node service (seed scenario 3), served by the head's sidecar.
HEAD_PORT = 9747
#: The sidecar's private scratch dir (an emptyDir): TMPDIR and HOME, its identity with
#: the head. Its root filesystem is read-only.
SCRATCH_DIR = "/tmp"
#: Where the sidecar sees the trial volume when the pod names an existing volume.
TRIAL_MOUNT = "/var/lib/trialsync/trial"
#: Where a credentials Secret's files appear in the sidecar.
CREDENTIALS_MOUNT = "/var/run/secrets/trialsync.io/credentials"
#: The sidecar's own state on the trial volume (the record of sent checkpoints that
#: mirror_deletes keeps), never synced: the operator mounts the volume writable for it.
STATE_DIR = ".trialsync"
#: The head's key, claims and lock, in its root unless set otherwise; never served.
HEAD_STATE_DIR = ".trialsync-head"
#: Seconds a pod's grace period needs beyond ``final_sync_timeout``: at deletion the
#: trainer gets SIGTERM first and the sidecar only once the trainer has exited, and the
#: sidecar's process needs a moment to exit after its final sync and clean-up.
EXIT_MARGIN = 5
#: The variable that carries the head-node service's token (by hand; the operator mounts
#: it as a file, ``HEAD_TOKEN_FILE``).
HEAD_TOKEN_ENV = ENV_PREFIX + "HEAD_TOKEN"
#: Where the head-node Secret's files appear in the sidecar: the token, and the head's
#: certificate and key (the head) or the certificate that identifies the head (a worker).
HEAD_SECRET_MOUNT = "/var/run/secrets/trialsync.io/head"


# -- modes and roles -------------------------------------------------------------------


class Mode(enum.StrEnum):
    """Where a SyncConfig sends its pods' data."""

    UPLOAD = "upload"  # an upload_dir: seed scenarios 1, 2 and 4
    HEAD = "head"  # no upload_dir: workers sync to the head node (scenario 3)
    DISABLED = "disabled"  # syncer none and no upload_dir


class Role(enum.StrEnum):
    WORKER = "worker"
    HEAD = "head"  # the pod of the Tune driver


class Duty(enum.Enum):
    """What one sidecar does, given its SyncConfig's mode and its pod's role."""

    UPLOAD = "upload"  # sync the trial volume to the upload dir
    SEND = "send"  # a worker's trial dirs to the head-node service
    RECEIVE = "receive"  # the head serves workers' trial dirs, writing its volume
    IDLE = "idle"  # nothing to sync


def mode_of(upload_dir: str | None, syncer: object) -> Mode:
    """The mode of a configuration; ``syncer`` None or ``"none"`` disables syncing."""
    if upload_dir:
        return Mode.UPLOAD
    return Mode.DISABLED if syncer in (None, "none") else Mode.HEAD


def duty_of(mode: Mode, role: Role) -> Duty:
    if mode is Mode.UPLOAD:
        return Duty.UPLOAD
    if mode is Mode.HEAD:
        return Duty.RECEIVE if role is Role.HEAD else Duty.SEND
    return Duty.IDLE


# -- the upload dir's backends ---------------------------------------------------------

#: Raises ValueError (saying what to fix) unless ``uri``, of scheme ``scheme``, can be served.
BackendCheck = Callable[[str, str], None]
#: The Python package each scheme's fsspec backend needs, for the users' most common ones.
PACKAGE_FOR = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "hdfs": "hdfs_native",
    "webhdfs": "requests",
    "abfs": "adlfs",
    "az": "adlfs",
}
#: The extras of the trialsync distribution the default sidecar image installs
#: (images/sidecar/Dockerfile), and the upload dir schemes they serve: the operator
#: refuses others unless a SyncConfig names its own image (tests/pods checks these
#: in the built image). HDFS is served both ways: ``hdfs://`` by hdfs-native (the
#: NameNode's RPC port, a client in Rust: no JVM) and ``webhdfs://`` (plain HTTP).
IMAGE_EXTRAS = ("cloud",)
IMAGE_SCHEMES = ("s3", "s3a", "gs", "gcs", "hdfs", "webhdfs", "file")
#: Schemes whose storage options are Hadoop configuration: each a single value.
HADOOP_CONFIG_SCHEMES = frozenset({"hdfs"})


def check_hadoop_options(options: Mapping[str, Any]) -> None:
    """Storage options of an ``hdfs://`` upload dir are Hadoop configuration keys, each
    with a single value; SettingError (naming the option) otherwise."""
    for key, value in options.items():
        if isinstance(value, Mapping | list | tuple) or value is None:
            raise SettingError(
                f"storage option {key!r} of an hdfs:// upload dir must be a Hadoop "
                f"configuration value (a string), got {value!r}"
            )


# -- the seed's six fields -------------------------------------------------------------------

#: Bucket names as S3 and GCS accept them (GCS also allows dots and underscores).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_BUCKET_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
#: What counts as a leading or trailing space: Unicode's White_Space, as the CRD's CEL
#: ``trim()`` has it (Python's own ``strip()`` also strips U+001C-U+001F).
_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPACED = "upload_dir must be a non-empty URI without leading or trailing spaces"
_NO_SCHEME = (
    " has no scheme (scheme://...): use s3://bucket/prefix, gs://bucket/prefix, "
    "webhdfs://namenode:9870/path or file:///absolute/path"
)
#: A WebHDFS upload dir names the NameNode's HTTP host and port (a user may precede them).
_WEBHDFS_SCHEMES = frozenset({"webhdfs"})
_NAMENODE = re.compile(r"^([^@/]+@)?[^@/:]+:[0-9]{1,5}$")
_NO_NAMENODE = (
    " must name the NameNode's HTTP host and port: webhdfs://namenode:9870/path (without a "
    "port, fsspec's webhdfs would use 50070, Hadoop 2's)"
)
_SYNCER_FORM = (
    " must be 'auto', 'none' or 'package.module:Class' (a trialsync.Syncer subclass shipped "
    "in a custom sidecar image)"
)
_CLASS = r"[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"


def upload_dir_scheme(setting: Setting[Any], uri: str) -> str:
    """Check an upload dir's form (what ``validate_upload_dir`` asks of every URI, backends
    aside) and return it."""
    at_most(setting, uri, 1024)
    if uri != uri.strip(_SPACES) or not uri:
        raise SettingError(f"{_SPACED}, got {quoted(uri)}")
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise SettingError(f"upload_dir {quoted(uri)}{_NO_SCHEME}")
    scheme = scheme.lower()
    if scheme in _BUCKET_SCHEMES:
        if not _BUCKET.fullmatch(rest.split("/", 1)[0]):
            raise SettingError(
                f"upload_dir {quoted(uri)} has no valid bucket name (3-222 lowercase letters, "
                "digits, '.', '_' or '-') after the scheme"
            )
    elif scheme == "file" and not rest.startswith("/"):
        raise SettingError(f"upload_dir {quoted(uri)} must be an absolute path: file:///abs/path")
    elif scheme == "hdfs" and not rest.strip("/"):
        raise SettingError(f"upload_dir {quoted(uri)} names no path: hdfs://namenode:8020/path")
    elif scheme in _WEBHDFS_SCHEMES and not _NAMENODE.fullmatch(rest.split("/", 1)[0]):
        raise SettingError(f"upload_dir {quoted(uri)}{_NO_NAMENODE}")
    if "//" in rest.lstrip("/"):
        raise SettingError(f"upload_dir {quoted(uri)} has an empty path segment ('//')")
    return uri


def _upload_dir_rules(setting: Setting[Any]) -> list[CelRule]:
    # The two checks that need no knowledge of schemes; the operator's webhook makes the
    # others (bucket names, backends), with the same messages.
    return [
        CelRule.of(
            "self == self.trim()",
            _SPACED,
            _SPACED + ", got ",
            cel_quoted("self"),
        ),
        CelRule.of(
            "self != self.trim() || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://')",
            "upload_dir" + _NO_SCHEME,
            "upload_dir ",
            cel_quoted("self"),
            _NO_SCHEME,
        ),
    ]


def syncer_name(setting: Setting[Any], syncer: str) -> str:
    """``auto``, ``none`` or ``package.module:Class``."""
    at_most(setting, syncer, 256)
    if syncer in ("auto", "none") or (syncer.isascii() and re.fullmatch(_CLASS, syncer)):
        return syncer
    raise SettingError(f"syncer {quoted(syncer)}{_SYNCER_FORM}")


def _syncer_rules(setting: Setting[Any]) -> list[CelRule]:
    return [
        CelRule.of(
            f"self == 'auto' || self == 'none' || self.matches('^{_CLASS}$')",
            "syncer" + _SYNCER_FORM,
            "syncer ",
            cel_quoted("self"),
            _SYNCER_FORM,
        )
    ]


UPLOAD_DIR: Text[str | None] = Text(
    "upload_dir",
    None,
    "URI to mirror the root under: s3://, gs://, webhdfs://, file://, ...",
    crd="uploadDir",
    checker=upload_dir_scheme,
    rules=_upload_dir_rules,
)
SYNCER: Text[str] = Text(
    "syncer",
    "auto",
    "auto, none, or package.module:Class",
    crd="syncer",
    checker=syncer_name,
    rules=_syncer_rules,
)
SYNC_PERIOD = WholeSeconds(
    "sync_period",
    300,
    "minimum seconds between the starts of two periodic syncs",
    crd="syncPeriod",
    hint=" (a week)",
)
SYNC_TIMEOUT = WholeSeconds(
    "sync_timeout",
    1800,
    "seconds after which a sync is cancelled and retried",
    crd="syncTimeout",
    hint=" (a week)",
)
SYNC_ARTIFACTS = Flag(
    "sync_artifacts", True, "sync trial-dir files that are not checkpoints", crd="syncArtifacts"
)
SYNC_ON_CHECKPOINT = Flag(
    "sync_on_checkpoint", True, "a checkpoint forces a sync to the head", crd="syncOnCheckpoint"
)


def check_seed(
    upload_dir: str | None,
    syncer: object,
    sync_period: object,
    sync_timeout: object,
    backend: BackendCheck | None,
) -> None:
    """The seed's ``validate_upload_dir``: the period and timeout; the syncer's form and
    that it fits the upload dir (None contradicts one, a custom syncer needs one, as in
    Ray); the upload dir's form, then ``backend`` (None: no backend check). ``syncer``:
    a name, None, or a Syncer object (then only its class name is shown)."""
    SYNC_PERIOD.check(sync_period)
    SYNC_TIMEOUT.check(sync_timeout)
    if isinstance(syncer, str):
        SYNCER.check(syncer)
    name = quoted(syncer) if isinstance(syncer, str) else type(syncer).__name__
    mode = mode_of(upload_dir, syncer)
    if mode is not Mode.UPLOAD:
        if syncer not in (None, "auto", "none"):
            raise SettingError(f"syncer {name}{_NEEDS_UPLOAD_DIR}")
        return
    assert upload_dir is not None
    if syncer in (None, "none"):
        raise SettingError(
            f"syncer=None disables syncing, which contradicts upload_dir={quoted(upload_dir)}"
            + _CONTRADICTS
        )
    UPLOAD_DIR.check(upload_dir)
    if backend is not None:
        backend(upload_dir.partition("://")[0].lower(), upload_dir)


def seed_cel_rules() -> list[CelRule]:
    """The spec-level rules of the CRD that ``check_seed``, ``check_mirror_deletes``,
    ``check_restore`` and ``check_keep_checkpoints`` make across fields."""
    custom = f"self.syncer.matches('^{_CLASS}$')"
    return [
        CelRule.of(
            "!(has(self.uploadDir) && has(self.syncer) && self.syncer == 'none')",
            "syncer=None disables syncing, which contradicts upload_dir" + _CONTRADICTS,
            "syncer=None disables syncing, which contradicts upload_dir=",
            cel_quoted("self.uploadDir"),
            _CONTRADICTS,
        ),
        CelRule.of(
            "!has(self.syncer) || self.syncer == 'auto' || self.syncer == 'none' || "
            f"!{custom} || (has(self.uploadDir) && self.uploadDir != '')",
            "syncer" + _NEEDS_UPLOAD_DIR,
            "syncer ",
            cel_quoted("self.syncer"),
            _NEEDS_UPLOAD_DIR,
        ),
        CelRule.of(
            "!has(self.mirrorDeletes) || !self.mirrorDeletes || !has(self.syncer) || "
            "self.syncer == 'auto'",
            MIRROR_DELETES_NEEDS_AUTO,
        ),
        CelRule.of(
            "!has(self.restoreOnStart) || !self.restoreOnStart || !has(self.syncer) || "
            "self.syncer == 'auto'",
            RESTORE_NEEDS_AUTO,
        ),
        CelRule.of(
            "!has(self.keepCheckpoints) || !has(self.syncer) || self.syncer == 'auto'",
            KEEP_CHECKPOINTS_NEEDS_AUTO,
        ),
    ]


_CONTRADICTS = ": remove upload_dir, or set syncer to 'auto'"
_NEEDS_UPLOAD_DIR = (
    " is a custom Syncer, which needs an upload_dir to sync to: set upload_dir, or use "
    "syncer 'auto' (sync to the head node) or None (no syncing)"
)


# -- what else crosses from a SyncConfig ---------------------------------------------------


_GLOB_OF_A_NAME = "must be a glob of a directory name, without '/'"


def checkpoint_glob(setting: Setting[Any], glob: str) -> str:
    at_most(setting, glob, 256)
    if not glob or "/" in glob:
        raise SettingError(f"{setting.name} {_GLOB_OF_A_NAME}, got {quoted(glob)}")
    return glob


def _checkpoint_glob_rules(setting: Setting[Any]) -> list[CelRule]:
    message = f"{setting.name} {_GLOB_OF_A_NAME}"
    return [CelRule.of("!self.contains('/')", message, message + ", got ", cel_quoted("self"))]


CHECKPOINT_PATTERN: Text[str] = Text(
    "checkpoint_pattern",
    "checkpoint_[0-9]*",
    "glob of checkpoint dir names in a trial dir",
    crd="checkpointPattern",
    checker=checkpoint_glob,
    rules=_checkpoint_glob_rules,
)
EXCLUDE = Globs("exclude", (), "globs of root-relative paths never synced", crd="excludes")
CHECKPOINT_SETTLE = WholeSeconds(
    "checkpoint_settle",
    3,
    "seconds without a change that make a checkpoint complete",
    crd="checkpointSettleSeconds",
    most=3600,
)
FINAL_SYNC_TIMEOUT = WholeSeconds(
    "final_sync_timeout",
    25,
    "seconds for everything after SIGTERM: the final sync, then aborting its cancelled uploads",
    crd="finalSyncTimeoutSeconds",
    most=86400,
)
MIRROR_DELETES = Flag(
    "mirror_deletes",
    False,
    "delete a checkpoint remotely when it is deleted locally",
    crd="mirrorDeletes",
)
MIRROR_DELETES_NEEDS_AUTO = (
    "mirror_deletes needs syncer 'auto' (a custom Syncer cannot list, and None syncs nothing)"
)


def check_mirror_deletes(mirror_deletes: bool, syncer: object) -> None:
    if mirror_deletes and syncer != "auto":
        raise SettingError(MIRROR_DELETES_NEEDS_AUTO)


KEEP_CHECKPOINTS = OptionalCount(
    "keep_checkpoints",
    None,
    "keep the newest this many complete checkpoints of each trial in the upload dir and "
    "delete older ones there, manifest first (default: keep all; local files are never "
    "deleted)",
    crd="keepCheckpoints",
)
KEEP_CHECKPOINTS_NEEDS_AUTO = (
    "keep_checkpoints needs syncer 'auto' (a custom Syncer cannot list, and None syncs nothing)"
)


def check_keep_checkpoints(keep: object, syncer: object) -> None:
    if keep is not None and syncer != "auto":
        raise SettingError(KEEP_CHECKPOINTS_NEEDS_AUTO)


BANDWIDTH_LIMIT = ByteRate(
    "bandwidth_limit",
    None,
    "upload bytes per second of the whole sidecar, a quantity such as 50Mi (a token bucket "
    "all uploads share; default 0: no limit)",
    crd="bandwidthLimit",
)


RESTORE = Flag(
    "restore",
    False,
    "before reporting ready, restore the pod's trials (their newest complete checkpoint "
    "and trial files) and, for the head, its experiment state",
    crd="restoreOnStart",
)
RESTORE_TIMEOUT = WholeSeconds(
    "restore_timeout",
    1800,
    "seconds a restore may take; past them the sidecar exits with an error and the "
    "trainer does not start",
    crd="restoreTimeoutSeconds",
    most=86400,
)
RESTORE_NEEDS_AUTO = (
    "restore on start needs syncer 'auto' (a custom Syncer cannot list or read, and None "
    "syncs nothing)"
)
RESTORE_KEY: Text[str | None] = Text(
    "restore_key",
    None,
    "the owner key of this pod's trials: recorded beside what it uploads, and what it "
    "restores (the operator derives it from the pod's Job, StatefulSet or RayCluster)",
)
RESTORE_PREFIX: Text[str | None] = Text(
    "restore_prefix",
    None,
    "restore every trial below this path of the upload dir (or of the head) instead of "
    "the owner key's",
)


def check_restore_prefix(prefix: str) -> None:
    """SettingError unless ``prefix`` is a path below the upload dir: segments, none of
    them empty, '.' or '..', and no ':' (the annotation's and the flag's rule)."""
    if any(part in ("", ".", "..") for part in prefix.split("/")) or ":" in prefix:
        raise SettingError(
            "must be a path below the upload dir, such as <experiment> or "
            "<experiment>/<trial>: names joined by '/', none of them empty, '.' or '..', "
            "and no ':'"
        )


def check_restore(restore: bool, syncer: object) -> None:
    if restore and syncer != "auto":
        raise SettingError(RESTORE_NEEDS_AUTO)


#: Storage option keys that would put a credential in a SyncConfig or on a command line.
CREDENTIAL_OPTIONS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "access_key",
        "secret_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "client_secret",
        "credentials",
        "account_key",
        "sas_token",
        "connection_string",
    }
)
CREDENTIAL_OPTION_MESSAGE = (
    "credentials never go in storage options: put them in a Secret (a SyncConfig's "
    "credentials.secretRef) or the sidecar's environment"
)
#: The one value of a credential option that is no credential: gcsfs's anonymous access.
ANONYMOUS = ("token", "anon")


def is_credential_option(key: str, value: object) -> bool:
    return key.lower() in CREDENTIAL_OPTIONS and (key.lower(), value) != ANONYMOUS


_ENDPOINT = "the store's endpoint must be an http:// or https:// URL"


def check_endpoint(endpoint: object) -> str:
    """The store's endpoint URL (``spec.storage.endpoint``, the ``endpoint_url`` option)."""
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise SettingError(f"{_ENDPOINT}, got {shown(endpoint)}")
    return endpoint


@dataclasses.dataclass(frozen=True)
class StorageOptions(Setting[dict[str, Any]]):
    """fsspec storage options: a JSON object; no credential among its keys."""

    def parse(self, text: str) -> dict[str, Any]:
        try:
            loaded = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingError(f"{self.name} is not JSON: {exc}") from exc
        return self.check(loaded)

    def check(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.refuse("a JSON object", value)
        if any(is_credential_option(str(key), v) for key, v in value.items()):
            raise SettingError(CREDENTIAL_OPTION_MESSAGE)
        if "endpoint_url" in value:
            check_endpoint(value["endpoint_url"])
        return value

    def render(self, value: dict[str, Any]) -> str:
        return json.dumps(value, sort_keys=True)


STORAGE_OPTIONS = StorageOptions(
    "storage_options", {}, "fsspec backend options (endpoint, region, ...) as a JSON object"
)
#: What ``STORAGE_OPTIONS.check`` refuses, as the CRD's fields under spec.storage say it.
ENDPOINT_RULE = CelRule.of(
    "self.startsWith('http://') || self.startsWith('https://')",
    _ENDPOINT,
    _ENDPOINT + ", got ",
    cel_quoted("self"),
)
CREDENTIAL_OPTIONS_RULE = CelRule.of(
    "!self.exists(k, k.lowerAscii() in ["
    + ", ".join(f"'{key}'" for key in sorted(CREDENTIAL_OPTIONS))
    + f"] && !(k.lowerAscii() == '{ANONYMOUS[0]}' && self[k] == '{ANONYMOUS[1]}'))",
    CREDENTIAL_OPTION_MESSAGE,
)


# -- what the operator sets from the pod ---------------------------------------------------

ROOT: Text[str | None] = Text("root", None, "the trial volume: <experiment>/<trial>/... (required)")
ROLE = Choice(
    "role", "worker", "worker, or head: the Tune driver's pod", choices=("worker", "head")
)
HEAD_URL: Text[str | None] = Text(
    "head_url", None, "the head-node service's URL (a worker, no upload dir)"
)
HEAD_CA_FILE: Text[str | None] = Text(
    "head_ca_file",
    None,
    "certificate (PEM) an https --head-url must prove to be signed by: the head's, not "
    "the system's trust store",
)
RECEIVER_CERT_FILE: Text[str | None] = Text(
    "receiver_cert_file",
    None,
    "the head's serving certificate (PEM): the head-node service serves TLS with it",
)
RECEIVER_KEY_FILE: Text[str | None] = Text(
    "receiver_key_file", None, "the private key (PEM) of --receiver-cert-file"
)
UPLOAD_MEMORY = Count("upload_memory", 256 * 2**20, "bytes of upload buffers at most")
CREATE_ROOT = Flag(
    "create_root",
    False,
    "make the root if it is missing: Ray's storage_path below the trial volume's mount, "
    "which the trainer has not made yet",
)
SHARE_FILES = Flag(
    "share_files",
    False,
    "make what the sidecar writes in the trial volume writable by every user (dirs 0777, "
    "files 0666): set when the pod does not say which user its trainer runs as",
)

# -- the sidecar's own -----------------------------------------------------------------------

HEAD_TOKEN_FILE: Text[str | None] = Text(
    "head_token_file", None, f"file holding the head-node service's token (or {HEAD_TOKEN_ENV})"
)
HEAD_IDENTITY_FILE: Text[str] = Text(
    "head_identity_file",
    f"{SCRATCH_DIR}/trialsync/head-identity.json",
    "where a worker keeps the identity the head gave it",
)
RECEIVER_ADDR = Address(
    "receiver_addr", f"0.0.0.0:{HEAD_PORT}", "host:port the head serves workers on"
)
RECEIVER_MAX_OBJECT_SIZE = Count(
    "receiver_max_object_size", 16 * 2**30, "bytes of the largest object the head accepts"
)
RECEIVER_MAX_UPLOADS = Count("receiver_max_uploads", 64, "uploads the head takes at once")
RECEIVER_CLAIM_LEASE = Seconds(
    "receiver_claim_lease",
    600.0,
    "seconds without a write after which another worker may take a trial dir over",
)
RECEIVER_STATE_DIR: Text[str | None] = Text(
    "receiver_state_dir", None, f"the head's key and claims (default <root>/{HEAD_STATE_DIR})"
)
ONCE = Flag("once", False, "sync everything once, then exit")
CREDENTIALS_DIR: Text[str] = Text(
    "credentials_dir",
    CREDENTIALS_MOUNT,
    "a mounted credentials Secret: each file named like an environment variable is read as "
    "one, again whenever the kubelet updates the volume (no such dir: the environment alone)",
)
S3_CLIENT = Choice(
    "s3_client",
    "auto",
    "auto: trialsync's lean S3 client unless a storage option needs botocore; botocore: "
    "always s3fs/botocore",
    choices=("auto", "botocore"),
)
HTTP_ADDR = Address(
    "http_addr", f"0.0.0.0:{HTTP_PORT}", "host:port of /healthz, /readyz, /metrics, POST /sync"
)
FILES_IN_FLIGHT = Count("files_in_flight", 64, "concurrent file uploads")
#: S3 refuses smaller parts (but the last).
S3_MIN_PART_SIZE = 5 * 2**20
PART_SIZE = Count(
    "part_size",
    16 * 2**20,
    "multipart part size in bytes",
    least=S3_MIN_PART_SIZE,
    why=" (the S3 minimum part size)",
)
RECONCILE_INTERVAL = Seconds(
    "reconcile_interval",
    3600.0,
    "seconds between ledger rebuilds from a remote listing",
    zero_means="never",
)
POLL_INTERVAL = Seconds("poll_interval", 10.0, "seconds between scans without inotify")
MAX_BACKOFF = Seconds("max_backoff", 60.0, "cap of the retry backoff in seconds")
LOG_LEVEL = Choice(
    "log_level", "info", "JSON logs on stderr", choices=("debug", "info", "warning", "error")
)

#: Every setting of the sidecar, in the order of ``trialsync sync --help``.
SETTINGS: tuple[Setting[Any], ...] = (
    ROOT,
    CREATE_ROOT,
    UPLOAD_DIR,
    HEAD_URL,
    HEAD_CA_FILE,
    HEAD_TOKEN_FILE,
    HEAD_IDENTITY_FILE,
    RECEIVER_ADDR,
    RECEIVER_CERT_FILE,
    RECEIVER_KEY_FILE,
    RECEIVER_MAX_OBJECT_SIZE,
    RECEIVER_MAX_UPLOADS,
    RECEIVER_CLAIM_LEASE,
    RECEIVER_STATE_DIR,
    ROLE,
    SYNC_PERIOD,
    SYNC_TIMEOUT,
    SYNC_ARTIFACTS,
    SYNC_ON_CHECKPOINT,
    SYNCER,
    CHECKPOINT_PATTERN,
    EXCLUDE,
    CHECKPOINT_SETTLE,
    ONCE,
    FINAL_SYNC_TIMEOUT,
    MIRROR_DELETES,
    KEEP_CHECKPOINTS,
    RESTORE,
    RESTORE_TIMEOUT,
    RESTORE_KEY,
    RESTORE_PREFIX,
    STORAGE_OPTIONS,
    S3_CLIENT,
    CREDENTIALS_DIR,
    HTTP_ADDR,
    FILES_IN_FLIGHT,
    PART_SIZE,
    UPLOAD_MEMORY,
    BANDWIDTH_LIMIT,
    SHARE_FILES,
    RECONCILE_INTERVAL,
    POLL_INTERVAL,
    MAX_BACKOFF,
    LOG_LEVEL,
)
BY_NAME: Mapping[str, Setting[Any]] = {setting.name: setting for setting in SETTINGS}
#: The settings a SyncConfig field holds, by that field's name.
BY_CRD_FIELD: Mapping[str, Setting[Any]] = {s.crd: s for s in SETTINGS if s.crd}


def environment(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The environment that gives the sidecar ``values`` (setting name -> value), in the
    order of ``SETTINGS``: what the operator injects."""
    return [(s.env, s.render(values[s.name])) for s in SETTINGS if s.name in values]


def grace_needed(final_sync_timeout: int) -> int:
    """The terminationGracePeriodSeconds a pod needs for its sidecar's shutdown."""
    return final_sync_timeout + EXIT_MARGIN


def known_env() -> frozenset[str]:
    """Every ``TRIALSYNC_*`` variable the sidecar reads."""
    return frozenset({s.env for s in SETTINGS} | {HEAD_TOKEN_ENV})
