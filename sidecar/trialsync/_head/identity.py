"""Worker identities of the head-node service: issued at registration, checked by HMAC.

An identity is ``<id>.<mac>``, where ``mac`` is HMAC-SHA256 of ``id`` under a key only
the head holds (its state dir, never served). The head keeps nothing per worker to check
one, and no worker can make one for another id: the shared token a worker holds only
buys a fresh id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from trialsync._util import private_files

log = logging.getLogger(__name__)

KEY_BYTES = 32
_DOMAIN = b"trialsync-identity-v1:"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_MAX = 63


class Issuer:
    """Issues and verifies identities under the key kept at ``key_path``."""

    def __init__(self, key_path: str) -> None:
        self.key_path = key_path
        self._key = b""

    def load(self) -> None:
        """Read the key, or create it on first start (blocking).

        A head restart keeps the key, so workers keep their identities and their claims.
        An unreadable key is set aside and replaced: workers then register again.
        """
        key = private_files.read_private(self.key_path)
        if key is not None and len(key) != KEY_BYTES:
            aside = private_files.set_aside(self.key_path)
            log.error(
                "head key unreadable; set aside, workers will register again",
                extra={"path": self.key_path, "moved_to": aside},
            )
            key = None
        if key is None:
            key = secrets.token_bytes(KEY_BYTES)
            private_files.write_private(self.key_path, key)
        self._key = key

    def issue(self, name: str) -> tuple[str, str]:
        """A new ``(id, identity)``; ``id`` starts with ``name`` made safe, for the logs."""
        prefix = _NAME_UNSAFE.sub("-", name).strip("-.")[:_NAME_MAX] or "worker"
        worker_id = f"{prefix}-{secrets.token_hex(6)}"
        return worker_id, f"{worker_id}.{self._mac(worker_id)}"

    def verify(self, identity: str) -> str | None:
        """The id of a genuine identity, None for anything else."""
        worker_id, dot, mac = identity.rpartition(".")
        if not dot or not worker_id or not self._key:
            return None
        # compare_digest: the time taken must not tell how much of a forgery was right.
        if not hmac.compare_digest(mac.encode(), self._mac(worker_id).encode()):
            return None
        return worker_id

    def _mac(self, worker_id: str) -> str:
        return hmac.new(self._key, _DOMAIN + worker_id.encode(), hashlib.sha256).hexdigest()
