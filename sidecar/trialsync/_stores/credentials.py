"""Credentials: read from a mounted Secret, and their changes detected so filesystem
clients are rebuilt, never left stale.

fsspec caches filesystem instances and the clients inside them keep the credentials they
were built with. A rotated Secret (a new version of its volume) or a refreshed
web-identity token must reach the next request, so the store compares this fingerprint
before its operations (docs/architecture.md, "Credentials and rotation").
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from collections.abc import Mapping, MutableMapping

from trialsync import contract

log = logging.getLogger(__name__)

_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
)
_FILE_VARS = (
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def fingerprint(extra_files: tuple[str, ...] = (), mount: str | None = None) -> str:
    """A digest of credential env vars, the identity (size, mtime) of credential files and
    the version of a mounted Secret (``mount_identity``)."""
    digest = hashlib.sha256()
    digest.update(f"mount={mount}\0".encode())
    for name in _ENV_VARS:
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    paths = [os.environ[name] for name in _FILE_VARS if os.environ.get(name)]
    for path in (*paths, *extra_files):
        try:
            st = os.stat(path)
            digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\0".encode())
        except OSError:
            digest.update(f"{path}:missing\0".encode())
    return digest.hexdigest()


# --- a mounted Secret ---------------------------------------------------------------------

#: The link the kubelet swaps to publish a new version of a Secret volume.
DATA_LINK = "..data"
#: A key the sidecar exports from the mount: named like an environment variable.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Keys never taken from a Secret: the sidecar's settings come from its SyncConfig.
_RESERVED_PREFIX = contract.ENV_PREFIX
#: Attempts at reading one consistent version while the kubelet swaps versions.
_READ_ATTEMPTS = 5


class CredentialsRefused(PermissionError):
    """The store refused the credentials (a wrong, revoked or expired key)."""


def mount_identity(directory: str) -> str | None:
    """Which version of the Secret volume at ``directory`` is there, cheaply; None if
    there is none (no mount: credentials come from the environment alone).

    The kubelet's atomic writer publishes each version as a new timestamped dir and swaps
    the ``..data`` link to it, so one ``readlink`` names the version. A plain directory
    (no ``..data``) is named by its files' identities instead.
    """
    try:
        return "link:" + os.readlink(os.path.join(directory, DATA_LINK))
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: ..data is not a link
            return None
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    parts = []
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        parts.append(f"{name}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return "files:" + "/".join(parts)


class MountedSecret:
    """The credentials Secret mounted at ``directory``, read as environment variables.

    Each file named like an environment variable (``AWS_ACCESS_KEY_ID``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ...) becomes one, its value the file's content
    without surrounding whitespace; other files (a key file ``key.json``) stay files that
    a variable may point at. ``refresh`` reads a new version when the kubelet published
    one and puts its values in ``environ`` (``os.environ``: botocore, gcsfs and custom
    syncers read credentials there), over what the process started with; a key that
    leaves the Secret gives the started value back. ``TRIALSYNC_*`` keys are ignored.
    """

    def __init__(self, directory: str, environ: MutableMapping[str, str] | None = None) -> None:
        self.directory = directory
        self._environ = os.environ if environ is None else environ
        self._started: dict[str, str | None] = {}  # each exported name's value before it
        self._values: dict[str, str] = {}
        self.identity: str | None = None

    def read(self) -> tuple[str | None, dict[str, str]]:
        """The current version's identity and values; ({} if there is no mount). Reads
        every file of one version, so a key and its secret always come from the same one.
        Blocking: call it off the event loop."""
        for _ in range(_READ_ATTEMPTS):
            identity = mount_identity(self.directory)
            if identity is None:
                return None, {}
            version = self.directory
            if identity.startswith("link:"):
                version = os.path.join(self.directory, identity.removeprefix("link:"))
            try:
                values = _read_values(version)
            except FileNotFoundError:  # the kubelet removed that version meanwhile
                continue
            if mount_identity(self.directory) == identity:
                return identity, values
        raise OSError(f"{self.directory}: the Secret volume kept changing while read")

    def apply(self, identity: str | None, values: Mapping[str, str]) -> list[str]:
        """Make ``values`` the exported variables; the names whose value changed."""
        changed = []
        for name in sorted(set(self._values) | set(values)):
            if name not in self._started:
                self._started[name] = self._environ.get(name)
            value = values.get(name, self._started[name])
            if self._environ.get(name) == value:
                continue
            changed.append(name)
            if value is None:
                self._environ.pop(name, None)
            else:
                self._environ[name] = value
        self._values = dict(values)
        self.identity = identity
        return changed

    def refresh(self) -> list[str]:
        """Read and apply the current version if it is not the one applied; the names
        whose value changed. Blocking (a readlink when nothing changed)."""
        if self.identity is not None and mount_identity(self.directory) == self.identity:
            return []
        identity, values = self.read()
        if identity == self.identity and identity is not None:
            return []
        return self.apply(identity, values)


def _read_values(version: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in sorted(os.listdir(version)):
        if name.startswith(".") or not _ENV_NAME.match(name):
            continue
        if name.startswith(_RESERVED_PREFIX):
            log.warning("ignoring the credentials key %s: settings come from the SyncConfig", name)
            continue
        path = os.path.join(version, name)
        if os.path.isdir(path):
            continue
        with open(path, "rb") as handle:
            raw = handle.read()
        try:
            values[name] = raw.decode().strip()
        except UnicodeDecodeError:
            log.warning("ignoring the credentials key %s: not UTF-8 text", name)
    return values
