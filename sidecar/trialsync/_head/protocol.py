"""Names both sides of the head-node service agree on (the API is in ``receiver``).

Kept apart from the server so a worker's ``HeadStore`` loads none of it.
"""

from __future__ import annotations

OBJECTS_PATH = "/v1/objects"
REGISTER_PATH = "/v1/register"
CLAIMS_PATH = "/v1/claims"
MTIME_HEADER = "X-Trialsync-Mtime-Ns"

# The "reason" of an error answer, for metrics and for callers that must tell refusals
# (retrying cannot help) from overload (retrying will).
REASON_CLAIMED = "claimed"  # 403: another worker holds the trial dir
REASON_HEAD_ONLY = "head_only"  # 403: experiment state, or outside any trial dir
REASON_SHARED_TOKEN = "shared_token"  # 403: the shared token only registers
REASON_TOO_LARGE = "too_large"  # 413
REASON_BUSY = "busy"  # 503, with Retry-After
# The worker's own: the server at the head's URL failed the TLS handshake (another
# certificate, or no TLS), so it was sent nothing.
REASON_NOT_TRUSTED = "not_trusted"


def trial_dir(rel: str) -> str | None:
    """``<experiment>/<trial>`` for a path inside a trial dir, None for any other path.

    A worker writes only inside trial dirs; files directly in an experiment dir are
    experiment state, which only the head writes.
    """
    parts = rel.split("/")
    return "/".join(parts[:2]) if len(parts) >= 3 else None
