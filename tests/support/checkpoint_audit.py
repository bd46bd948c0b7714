"""Checks the publish contract from outside: every manifest a reader sees is whole.

:class:`BucketReader` polls a bucket the way a restoring job would and records every
manifest it sees with the listing it saw it in. Judgement waits for the truth (the
trainer's log, :class:`Truth`), which is known only once the trainer is done:

* **half-published**: a manifest seen while its checkpoint was not whole in the bucket:
  a file missing or with other bytes (size or ETag) than the checkpoint's final ones,
  another file set than the trainer wrote, or a checkpoint the trainer never finished;
* **lost**: a checkpoint the trainer finished and kept that has no whole, published copy
  after the final sync;
* **leaked**: a checkpoint the trainer deleted that still has objects (``--mirror-deletes``).

The listing gives each object's size and ETag (the MD5, or the multipart ETag for the
part size the trainer computed), so nothing is downloaded but the small manifests.
:func:`snapshot` takes what a bucket holds at one moment, multipart uploads in progress
included (``tests/faults/landings.py`` tells from two where a SIGKILL landed).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from trialsync._engine.layout import MANIFEST_NAME


@dataclasses.dataclass(frozen=True)
class Truth:
    """What the trainer wrote: the final files of each checkpoint, and what it deleted."""

    complete: dict[str, dict[str, tuple[int, str]]]  # checkpoint -> name -> (size, etag)
    deleted: set[str]

    @classmethod
    def load(cls, log: Path) -> Truth:
        """The truth so far: a line the trainer is still writing is left out."""
        complete: dict[str, dict[str, tuple[int, str]]] = {}
        deleted: set[str] = set()
        for line in log.read_text().split("\n")[:-1]:
            entry = json.loads(line)
            if "deleted" in entry:
                deleted.add(entry["deleted"])
            else:
                complete[entry["checkpoint"]] = {
                    name: (f["size"], f["etag"]) for name, f in entry["files"].items()
                }
        return cls(complete, deleted)

    @property
    def kept(self) -> list[str]:
        return sorted(set(self.complete) - self.deleted)


@dataclasses.dataclass(frozen=True)
class Sighting:
    checkpoint: str
    manifest: dict[str, int]  # name -> size, as the manifest lists them
    listed: dict[str, tuple[int, str]]  # name -> (size, etag), as the bucket listed them


def list_bucket(client: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """{key relative to prefix: (size, etag)} of every object under ``prefix/``."""
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) + 1 :]] = (item["Size"], item["ETag"].strip('"'))
    return found


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a bucket held at one moment: its objects, and the multipart uploads begun and
    neither completed nor aborted."""

    objects: dict[str, tuple[int, str]]  # key relative to the prefix -> (size, etag)
    uploads: frozenset[tuple[str, str]]  # (key relative to the prefix, upload id)


def snapshot(client: Any, bucket: str, prefix: str) -> Snapshot:
    uploads = set()
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for upload in page.get("Uploads", []):
            uploads.add((upload["Key"][len(prefix) + 1 :], upload["UploadId"]))
    return Snapshot(list_bucket(client, bucket, prefix), frozenset(uploads))


def read_manifest(client: Any, bucket: str, key: str) -> dict[str, int] | None:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return {name: int(entry["size"]) for name, entry in json.loads(body)["files"].items()}


def checkpoint_files(
    listing: dict[str, tuple[int, str]], checkpoint: str
) -> dict[str, tuple[int, str]]:
    inside = checkpoint + "/"
    return {
        rel[len(inside) :]: value
        for rel, value in listing.items()
        if rel.startswith(inside) and not rel.endswith(MANIFEST_NAME)
    }


def still_there(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError:
        return False
    return True


class BucketReader(threading.Thread):
    """Polls ``bucket/prefix`` every ``interval`` seconds and records each manifest seen."""

    def __init__(self, client: Any, bucket: str, prefix: str, interval: float = 0.2) -> None:
        super().__init__(name="bucket-reader", daemon=True)
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.interval = interval
        self.sightings: list[Sighting] = []
        self.polls = 0
        self.errors: list[str] = []
        self._seen: set[tuple[str, str]] = set()  # (manifest key, etag) already checked
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll()
            except Exception as exc:  # a reader error must show, not kill the thread
                self.errors.append(repr(exc))
            time.sleep(self.interval)

    def poll(self) -> None:
        listing = list_bucket(self.client, self.bucket, self.prefix)
        self.polls += 1
        for rel, (_size, etag) in listing.items():
            if not rel.endswith("/" + MANIFEST_NAME) or (rel, etag) in self._seen:
                continue
            self._seen.add((rel, etag))
            key = f"{self.prefix}/{rel}"
            manifest = read_manifest(self.client, self.bucket, key)
            if manifest is None:
                continue  # withdrawn meanwhile
            checkpoint = rel[: -len(MANIFEST_NAME) - 1]
            listed = checkpoint_files(listing, checkpoint)
            if any(listed.get(name, (None,))[0] != size for name, size in manifest.items()):
                # The listing is not atomic: a deletion (manifest first, then the files)
                # may have begun after the manifest was listed. Only a manifest still
                # there now vouches for files that are missing.
                if not still_there(self.client, self.bucket, key):
                    continue
                again = list_bucket(self.client, self.bucket, f"{self.prefix}/{checkpoint}")
                listed = {name: v for name, v in again.items() if name != MANIFEST_NAME}
            self.sightings.append(Sighting(checkpoint, manifest, listed))


def half_published(sightings: list[Sighting], truth: Truth) -> list[str]:
    """Each sighting of a manifest over a checkpoint that was not whole, described."""
    bad = []
    for seen in sightings:
        final = truth.complete.get(seen.checkpoint)
        if final is None:
            bad.append(f"{seen.checkpoint}: a manifest for a checkpoint never finished")
            continue
        if {name: size for name, (size, _) in final.items()} != seen.manifest:
            bad.append(f"{seen.checkpoint}: manifest lists {seen.manifest}, trainer wrote {final}")
            continue
        for name, expected in final.items():
            if seen.listed.get(name) != expected:
                bad.append(
                    f"{seen.checkpoint}/{name}: stored {seen.listed.get(name)}, final {expected}"
                )
    return bad


def lost(client: Any, bucket: str, prefix: str, truth: Truth) -> list[str]:
    """Checkpoints the trainer finished and kept without a whole, published copy."""
    listing = list_bucket(client, bucket, prefix)
    missing = []
    for checkpoint in truth.kept:
        manifest = read_manifest(client, bucket, f"{prefix}/{checkpoint}/{MANIFEST_NAME}")
        final = truth.complete[checkpoint]
        if manifest is None:
            missing.append(f"{checkpoint}: no manifest")
        elif checkpoint_files(listing, checkpoint) != final or manifest != {
            name: size for name, (size, _) in final.items()
        }:
            missing.append(f"{checkpoint}: not whole ({checkpoint_files(listing, checkpoint)})")
    return missing


def leaked(client: Any, bucket: str, prefix: str, truth: Truth) -> list[str]:
    """Deleted checkpoints that still have objects in the bucket."""
    listing = list_bucket(client, bucket, prefix)
    return sorted(c for c in truth.deleted if any(rel.startswith(c + "/") for rel in listing))
