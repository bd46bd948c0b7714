"""What has been uploaded: the record that makes a steady-state sync cost O(changes).

The ledger maps a root-relative path to the (size, mtime_ns) the file had when its upload
was confirmed. It lives in memory; after a restart it is rebuilt from the listing of the
local trial dirs' prefixes and the manifests of their published checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from trialsync._stores.base import RemoteObject
from trialsync._util.local_files import Stat


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
        manifests: Mapping[str, Stat],
        in_checkpoint: Callable[[str], bool],
    ) -> Ledger:
        """The ledger after a restart: what the store is known to hold of ``local``.

        A checkpoint file counts as uploaded only where its checkpoint's manifest
        (``manifests``: path -> the (size, mtime_ns) it lists) has exactly the local size
        and mtime and the store holds an object of that size. Any other file (experiment
        state, artifacts) counts where the remote copy has the local size and is not older
        than the local file's mtime truncated to whole seconds (S3 keeps seconds), the rule
        ``aws s3 sync`` uses; a store that reports no time is trusted on size alone.
        """
        ledger = cls()
        for rel, stat in local.items():
            obj = remote.get(rel)
            if obj is None or obj.size != stat[0]:
                continue
            if in_checkpoint(rel):
                trusted = manifests.get(rel) == stat
            else:
                trusted = obj.mtime is None or obj.mtime >= stat[1] // 1_000_000_000
            if trusted:
                ledger.record(rel, stat)
        ledger.published.update(published)
        return ledger
