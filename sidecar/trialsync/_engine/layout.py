"""Where a file belongs in a Ray storage path: experiment state, trial artifact or checkpoint.

The root holds Tune's ``<experiment>/<trial>/checkpoint_NNNNNN/...``, or Train V2's
``<run>/checkpoint_<timestamp>/...`` (no trial level). Files directly in an experiment dir
are experiment state (seed scenario 1); files in a trial dir are artifacts (scenario 4)
unless they sit under a checkpoint dir (scenario 2).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import hashlib

from trialsync import contract

MANIFEST_NAME = ".trialsync-manifest.json"
#: ``<dir>/.trialsync-owner.<hash of the key>``: an empty object beside what a sidecar
#: with an owner key uploads, marking ``dir`` (a trial dir, or an experiment dir for its
#: state) as that key's, for a restore to find (docs/architecture.md, "Restore on start").
OWNER_MARKER_PREFIX = ".trialsync-owner."
#: A file or checkpoint dir being restored, renamed into place once whole; never synced.
RESTORING_PREFIX = ".trialsync-restoring."
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


#: Placements remembered per layout (a scan asks for each file's several times per round);
#: past this many the memory starts over.
PLACE_CACHE = 2**18


@dataclasses.dataclass(frozen=True)
class Layout:
    """Classifies root-relative POSIX paths; ``excludes`` are globs matched against them."""

    checkpoint_pattern: str = contract.CHECKPOINT_PATTERN.default
    excludes: tuple[str, ...] = ()
    _placed: dict[str, Placement | None] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def place(self, rel: str) -> Placement | None:
        """Return where ``rel`` belongs, or None if it is excluded or ours (a manifest, the
        state dir)."""
        try:
            return self._placed[rel]
        except KeyError:
            pass
        if len(self._placed) >= PLACE_CACHE:
            self._placed.clear()
        placed = self._placed[rel] = self._place(rel)
        return placed

    def _place(self, rel: str) -> Placement | None:
        parts = rel.split("/")
        if (
            is_ours(parts[-1])
            or parts[0] == STATE_DIR
            or any(part.startswith(RESTORING_PREFIX) for part in parts)
            or self.excluded(rel)
        ):
            return None
        depth = self._checkpoint_depth(parts)
        if depth and len(parts) > depth:
            return Placement(Kind.CHECKPOINT, "/".join(parts[:depth]))
        if len(parts) <= 2:
            return Placement(Kind.EXPERIMENT)
        return Placement(Kind.ARTIFACT)

    def unit_of(self, rel: str, placement: Placement) -> str | None:
        """The dir an owner marker for ``rel`` goes in: a checkpoint's parent (the trial
        dir, or Train V2's run dir), an artifact's trial dir, the experiment dir of its
        state; None for a file directly in the root."""
        if placement.checkpoint is not None:
            return placement.checkpoint.rpartition("/")[0]
        parts = rel.split("/")
        if placement.kind is Kind.ARTIFACT:
            return "/".join(parts[:2])
        return parts[0] if len(parts) == 2 else None

    def checkpoint_dir(self, rel: str) -> str | None:
        """Return ``rel`` itself if it names a checkpoint dir (``exp/trial/checkpoint_N``, or
        Train V2's ``run/checkpoint_<timestamp>``)."""
        parts = rel.split("/")
        return rel if self._checkpoint_depth(parts) == len(parts) else None

    def _checkpoint_depth(self, parts: list[str]) -> int:
        """How many leading parts of a path make its checkpoint dir: 3 in Tune's layout, 2
        in Train V2's, 0 when the path is in none."""
        for depth in (2, 3):
            if len(parts) >= depth and fnmatch.fnmatchcase(
                parts[depth - 1], self.checkpoint_pattern
            ):
                return depth
        return 0

    def excluded(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.excludes)


def owner_marker(key: str) -> str:
    """The name of the owner marker of ``key`` (its hash: any text makes a safe name)."""
    return OWNER_MARKER_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


def is_ours(name: str) -> bool:
    """Whether a file name is trialsync's own: a manifest or an owner marker."""
    return name == MANIFEST_NAME or name.startswith(OWNER_MARKER_PREFIX)
