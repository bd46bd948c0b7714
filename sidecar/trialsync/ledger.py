"""What has been uploaded: the record that makes a steady-state sync cost O(changes).

The ledger maps a root-relative path to the (size, mtime_ns) the file had when its upload
was confirmed. It lives in memory; after a restart it is rebuilt from one remote listing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

Stat = tuple[int, int]  # (size in bytes, mtime in ns)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object as a listing reports it; ``mtime`` in epoch seconds when the store says."""

    size: int
    mtime: float | None = None
    checksum: str | None = None


class Ledger:
    def __init__(self) -> None:
        self._uploaded: dict[str, Stat] = {}
        self.published: set[str] = set()

    def __len__(self) -> int:
        return len(self._uploaded)

    def is_current(self, rel: str, stat: Stat) -> bool:
        return self._uploaded.get(rel) == stat

    def record(self, rel: str, stat: Stat) -> None:
        self._uploaded[rel] = stat

    def forget(self, rels: Iterable[str]) -> None:
        for rel in rels:
            self._uploaded.pop(rel, None)

    def forget_under(self, prefix: str) -> None:
        """Drop every entry at or below ``prefix`` (a checkpoint that is re-published)."""
        cut = prefix + "/"
        for rel in [r for r in self._uploaded if r.startswith(cut)]:
            del self._uploaded[rel]
        self.published.discard(prefix)

    @classmethod
    def rebuild(
        cls,
        local: Mapping[str, Stat],
        remote: Mapping[str, RemoteObject],
        published: Iterable[str],
    ) -> Ledger:
        """Trust a remote copy that has the local size and is not older than the local file.

        This is the rule ``aws s3 sync`` uses; a store that reports no mtime is trusted on
        size alone.
        """
        ledger = cls()
        for rel, stat in local.items():
            obj = remote.get(rel)
            if obj is None or obj.size != stat[0]:
                continue
            if obj.mtime is None or obj.mtime >= stat[1] / 1e9 - 1.0:
                ledger.record(rel, stat)
        ledger.published.update(published)
        return ledger
