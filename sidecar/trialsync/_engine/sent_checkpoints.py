"""The checkpoints whose files this volume sent, recorded on the volume (``--mirror-deletes``).

A checkpoint missing locally while its files are in storage is either one this volume
deleted (Ray's ``num_to_keep``), whose remote copy must go too, or one that never was here
(another worker's, or an older one of a trial restored on this worker), which must stay.
Only a record kept on the volume itself tells the two apart after a restart, including
for deletions made while the sidecar was down. A checkpoint is added before its first
file is sent, and removed only when a listing finds nothing of it left: an upload abandoned
at a timeout can still land after the deletion, so a deleted checkpoint is listed (and
cleaned) once more at the next start-up or reconcile.

The record is ``<root>/.trialsync/sent-checkpoints``: one ``+path`` or ``-path`` line per
change, appended (a process killed mid-write loses at most its last line, which only
means a deletion is not mirrored), and compacted at start-up. Where the volume cannot be
written, the record is off and only deletions seen while the sidecar runs are mirrored.
Every method blocks: call it in a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading

from trialsync._engine.layout import STATE_DIR

log = logging.getLogger(__name__)

FILE_NAME = "sent-checkpoints"


class SentCheckpoints:
    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, STATE_DIR, FILE_NAME)
        self._sent: set[str] = set()
        self._writable = True
        self._lock = threading.Lock()  # publishes record from several worker threads

    def __contains__(self, checkpoint: object) -> bool:
        return checkpoint in self._sent

    def snapshot(self) -> frozenset[str]:
        return frozenset(self._sent)

    def load(self) -> None:
        """Read the record and rewrite it compacted (one ``+`` line per checkpoint)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        sent: set[str] = set()
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
                for line in handle:
                    if not line.endswith("\n"):
                        break  # torn by a kill mid-append
                    mark, path = line[:1], line[1:-1]
                    if mark == "+":
                        sent.add(path)
                    elif mark == "-":
                        sent.discard(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(
                "cannot read %s (%s): deletions made while down are not mirrored", self.path, exc
            )
        self._sent = sent
        self._write("".join(f"+{path}\n" for path in sorted(sent)), replace=True)

    def add(self, checkpoints: set[str]) -> None:
        with self._lock:
            new = checkpoints - self._sent
            if new:
                self._sent |= new
                self._write("".join(f"+{path}\n" for path in sorted(new)))

    def remove(self, checkpoint: str) -> None:
        with self._lock:
            if checkpoint in self._sent:
                self._sent.discard(checkpoint)
                self._write(f"-{checkpoint}\n")

    def _write(self, text: str, replace: bool = False) -> None:
        if not self._writable:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            if replace:
                temp = f"{self.path}.tmp"
                with open(temp, "w", encoding="utf-8", errors="surrogateescape") as handle:
                    handle.write(text)
                os.replace(temp, self.path)
            elif text:
                with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as handle:
                    handle.write(text)
        except OSError as exc:
            self._writable = False
            log.warning(
                "cannot write %s (%s): deletions made while the sidecar is down will not "
                "be mirrored",
                self.path,
                exc,
            )
