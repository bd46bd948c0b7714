"""Where a SIGKILL landed: what the sidecar was doing to which checkpoint at that moment.

Judged from the bucket when the sidecar's life began and at the kill (a dead sidecar
changes nothing more, so a listing right after the kill is the bucket at the kill, the
multipart uploads it had begun and not ended included), the trainer's truth log, and the
sidecar's own JSON log of that life:

* **mid-upload**: a checkpoint that has objects this life put there (new keys or new
  bytes), or a multipart upload this life began and did not end, is not whole in the
  bucket and has no manifest: the kill cut its upload short. (A checkpoint the trainer had
  deleted does not count: its upload may have ended, its files gone.)
* **mid-publish**, either
  - *before the manifest*: a checkpoint whose files are all in the bucket with their final
    sizes and ETags, some of them put there by this life, and which has no manifest: the
    kill came between its last file landing and its manifest (verifying it, or writing the
    manifest). In a sidecar's life only a trigger or the settle window makes it upload a
    checkpoint, and either makes it publish it too: these files wait for nothing but the
    manifest;
  - *deleting*: a checkpoint the trainer deleted whose manifest or files this life removed
    (``--mirror-deletes``: manifest first), and which still has files: the kill cut its
    remote deletion short.
* **start-up**: the sidecar had not logged ``ledger rebuilt`` (recovery) yet.

A checkpoint counts only if the sidecar's log agrees: one it logged as published (or its
deletion as mirrored) in that life is not cut short by the kill. A kill can land on several
checkpoints at once, one mid-upload and another mid-publish.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tests.support.checkpoint_audit import Snapshot, Truth
from trialsync._engine.layout import MANIFEST_NAME


@dataclasses.dataclass(frozen=True)
class Landing:
    uploading: tuple[str, ...]  # checkpoints mid-upload
    before_manifest: tuple[str, ...]  # mid-publish: all files up, no manifest yet
    deleting: tuple[str, ...]  # mid-publish: remote deletion begun, not finished
    recovered: bool  # the sidecar had logged "ledger rebuilt"

    @property
    def mid_upload(self) -> bool:
        return bool(self.uploading)

    @property
    def mid_publish(self) -> bool:
        return bool(self.before_manifest or self.deleting)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("mid-upload of", self.uploading),
                ("mid-publish (before the manifest) of", self.before_manifest),
                ("mid-publish (deleting) of", self.deleting),
            )
            if names
        ]
        if not self.recovered:
            parts.append("in start-up")
        return "; ".join(parts) or "elsewhere (idle, or between the checkpoints)"


def log_records(text: str) -> list[dict[str, Any]]:
    """The sidecar's JSON log records (a line cut short by the kill is left out)."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def by_checkpoint(keys: dict[str, tuple[int, str]]) -> dict[str, dict[str, tuple[int, str]]]:
    """{checkpoint dir: {file name in it: (size, etag)}} of the checkpoint objects in ``keys``."""
    checkpoints: dict[str, dict[str, tuple[int, str]]] = {}
    for key, value in keys.items():
        split = checkpoint_of(key)
        if split is not None:
            checkpoints.setdefault(split[0], {})[split[1]] = value
    return checkpoints


def checkpoint_of(key: str) -> tuple[str, str] | None:
    """(checkpoint dir, name inside it) of an object key; None outside checkpoints."""
    parts = key.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("checkpoint_"):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1 :])
    return None


def landing(start: Snapshot, end: Snapshot, truth: Truth, sidecar_log: str) -> Landing:
    """Where a kill landed: ``start`` and ``end`` are the bucket when the life began and
    at the kill, ``truth`` the trainer's log at the kill, ``sidecar_log`` the life's log."""
    records = log_records(sidecar_log)
    published = {r.get("path") for r in records if r.get("msg") == "checkpoint published"}
    mirrored = {r.get("path") for r in records if r.get("msg") == "checkpoint deletion mirrored"}
    recovered = any(r.get("msg") == "ledger rebuilt" for r in records)
    before, after = by_checkpoint(start.objects), by_checkpoint(end.objects)
    begun = set()  # checkpoints with a multipart upload this life began and did not end
    for key, _upload in end.uploads - start.uploads:
        split = checkpoint_of(key)
        if split is not None:
            begun.add(split[0])
    uploading, before_manifest, deleting = [], [], []
    for checkpoint in sorted({*before, *after, *begun}):
        then, now = before.get(checkpoint, {}), after.get(checkpoint, {})
        if MANIFEST_NAME in now:
            continue
        put_here = checkpoint in begun or any(then.get(n) != v for n, v in now.items())
        removed_here = any(name not in now for name in then)
        if checkpoint in truth.deleted:
            if removed_here and now and checkpoint not in mirrored:
                deleting.append(checkpoint)
            continue
        if not put_here or checkpoint in published:
            continue
        if checkpoint not in begun and now == truth.complete.get(checkpoint):
            before_manifest.append(checkpoint)
        else:
            uploading.append(checkpoint)
    return Landing(tuple(uploading), tuple(before_manifest), tuple(deleting), recovered)
