"""The sidecar's defaults, each defined here and nowhere else.

Settings, the engine, the stores and the transfer code read these names; the README's flag
table states the same values (a unit test compares them). The seed's own defaults
(``sync_period``, ``sync_timeout``, ...) belong to the seed model, ``trialsync.config``.
This module imports nothing, so reading it costs nothing.
"""

from __future__ import annotations

ROLE = "worker"
RECEIVER_ADDR = "0.0.0.0:9747"
# The head-node service, and a worker's identity with it.
HEAD_IDENTITY_FILE = "/tmp/trialsync/head-identity.json"
RECEIVER_MAX_OBJECT_SIZE = 16 * 2**30
RECEIVER_MAX_UPLOADS = 64
RECEIVER_CLAIM_LEASE = 600.0
RECEIVER_STATE_DIR = ".trialsync-head"  # in the head's root
HTTP_ADDR = "0.0.0.0:9746"
S3_CLIENT = "auto"
LOG_LEVEL = "info"
CHECKPOINT_PATTERN = "checkpoint_[0-9]*"
#: Seconds without a change after which a checkpoint counts as complete.
CHECKPOINT_SETTLE = 3.0
#: Seconds for everything after SIGTERM: the final sync, then aborting the multipart
#: uploads it cancelled and closing connections (see ``ABORT_SHARE``).
FINAL_SYNC_TIMEOUT = 25.0
#: The part of the SIGTERM budget kept back from the final sync for aborts and closing:
#: this fraction of it, at most ``ABORT_GRACE`` seconds.
ABORT_SHARE = 0.2
ABORT_GRACE = 5.0
FILES_IN_FLIGHT = 32
#: Multipart part size, and the parts of one file in flight: about
#: ``PART_SIZE * PART_CONCURRENCY`` of memory for each large file being uploaded.
PART_SIZE = 16 * 2**20
PART_CONCURRENCY = 4
UPLOAD_MEMORY = 256 * 2**20
RECONCILE_INTERVAL = 3600.0
POLL_INTERVAL = 10.0
#: The scheduler's retry backoff: 1, 2, 4, ... seconds, at most ``MAX_BACKOFF``.
BACKOFF_BASE = 1.0
MAX_BACKOFF = 60.0


def abort_reserve(budget: float) -> float:
    """Seconds of a SIGTERM ``budget`` kept back from the final sync for aborts and closing."""
    return min(ABORT_GRACE, budget * ABORT_SHARE)
