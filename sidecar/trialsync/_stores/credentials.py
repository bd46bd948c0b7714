"""Detects credential changes so filesystem clients are rebuilt, never left stale.

fsspec caches filesystem instances and the clients inside them keep the credentials they
were built with. A rotated Secret (a new file content) or a refreshed web-identity token
must reach the next request, so the store compares this fingerprint before every sync.
"""

from __future__ import annotations

import hashlib
import os

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


def fingerprint(extra_files: tuple[str, ...] = ()) -> str:
    """A digest of credential env vars and the identity (size, mtime) of credential files."""
    digest = hashlib.sha256()
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
