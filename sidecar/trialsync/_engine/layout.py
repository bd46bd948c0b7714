"""Where a file belongs in a Ray storage path: experiment state, trial artifact or checkpoint.

The root holds ``<experiment>/<trial>/checkpoint_NNNNNN/...``. Files directly in an
experiment dir are experiment state (seed scenario 1); files in a trial dir are artifacts
(scenario 4) unless they sit under a checkpoint dir (scenario 2).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch

from trialsync import contract

MANIFEST_NAME = ".trialsync-manifest.json"
#: The sidecar's own state on the volume (``sent_checkpoints``), never synced.
STATE_DIR = contract.STATE_DIR


class Kind(enum.Enum):
    EXPERIMENT = "experiment"
    ARTIFACT = "artifact"
    CHECKPOINT = "checkpoint"


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """A file's kind and, for a checkpoint file, the relative path of its checkpoint dir."""

    kind: Kind
    checkpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """Classifies root-relative POSIX paths; ``excludes`` are globs matched against them."""

    checkpoint_pattern: str = contract.CHECKPOINT_PATTERN.default
    excludes: tuple[str, ...] = ()

    def place(self, rel: str) -> Placement | None:
        """Return where ``rel`` belongs, or None if it is excluded or ours (a manifest, the
        state dir)."""
        parts = rel.split("/")
        if parts[-1] == MANIFEST_NAME or parts[0] == STATE_DIR or self.excluded(rel):
            return None
        if len(parts) <= 2:
            return Placement(Kind.EXPERIMENT)
        if len(parts) >= 4 and fnmatch.fnmatchcase(parts[2], self.checkpoint_pattern):
            return Placement(Kind.CHECKPOINT, "/".join(parts[:3]))
        return Placement(Kind.ARTIFACT)

    def checkpoint_dir(self, rel: str) -> str | None:
        """Return ``rel`` itself if it names a checkpoint dir (``exp/trial/checkpoint_N``)."""
        parts = rel.split("/")
        if len(parts) == 3 and fnmatch.fnmatchcase(parts[2], self.checkpoint_pattern):
            return rel
        return None

    def excluded(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.excludes)
