"""SIGKILL while keep_checkpoints deletes: no checkpoint that looks complete (its manifest
listed) ever misses an object its manifest lists, and after a restart the newest N
complete checkpoints of the trial remain and the orphans of interrupted deletions are gone.

Each life adds checkpoints on the volume and starts a sidecar with ``--keep-checkpoints
2``, which publishes them and retires the older ones; it is killed at a random moment.
A thread lists the bucket meanwhile (one page: a snapshot) and checks every listed
manifest against the objects listed with it.
"""

from __future__ import annotations

import json
import pathlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from localcluster.processes import free_port
from tests.faults.harness import Target, sidecar_args
from tests.support import trials
from tests.support.checkpoint_audit import list_bucket
from tests.support.sidecar_process import Sidecar, run_once
from trialsync._engine import retention
from trialsync._engine.layout import MANIFEST_NAME

KEEP = 2
LIVES = 8
PER_LIFE = 6  # checkpoints added before each life
FILES = {f"shard_{i}.bin": 8_000 for i in range(12)}
TRIAL = "exp/trial_00000"


def _checkpoints(listing: dict[str, tuple[int, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for rel in listing:
        parts = rel.split("/")
        if len(parts) == 4 and parts[2].startswith("checkpoint_"):
            found.setdefault("/".join(parts[:3]), set()).add(parts[3])
    return found


class Watcher(threading.Thread):
    """Lists the bucket over and over; records each manifest listed without an object it
    names (a checkpoint that looks complete but is half deleted)."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.client = target.server.client()
        self.broken: list[str] = []
        self.polls = 0
        self.stopping = threading.Event()
        self.manifests: dict[str, list[str]] = {}  # checkpoint -> its files, once read

    def run(self) -> None:
        while not self.stopping.is_set():
            listing = list_bucket(self.client, self.target.bucket, self.target.prefix)
            self.polls += 1
            for checkpoint, names in _checkpoints(listing).items():
                if MANIFEST_NAME not in names:
                    continue
                files = self.manifests.get(checkpoint)
                if files is None:
                    files = self._read(checkpoint)
                    if files is None:
                        continue  # deleted since the listing
                    self.manifests[checkpoint] = files
                missing = [name for name in files if name not in names]
                if missing:
                    self.broken.append(f"{checkpoint}: manifest listed without {missing}")

    def _read(self, checkpoint: str) -> list[str] | None:
        key = f"{self.target.prefix}/{checkpoint}/{MANIFEST_NAME}"
        try:
            body = self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return sorted(json.loads(body)["files"])


def test_sigkill_during_retention_never_leaves_a_complete_looking_checkpoint_short(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
    target = Target.make(seaweedfs)
    root = tmp_path / "root"
    trial = trials.trial(trials.experiment(root))
    args = sidecar_args(root, target, "--checkpoint-settle", "1", "--keep-checkpoints", str(KEEP))
    watcher = Watcher(target)
    watcher.start()
    orphans_seen = 0
    number = 0
    client = seaweedfs.client()
    try:
        for life in range(LIVES):
            for _ in range(PER_LIFE):
                number += 1
                trials.checkpoint(trial, number, FILES)
            port = free_port()
            sidecar = Sidecar(args, seaweedfs.env(), str(tmp_path / f"sidecar-{life}.log"), port)
            time.sleep(rng.uniform(0.5, 3.0))
            sidecar.kill()
            listing = list_bucket(client, target.bucket, target.prefix)
            grouped = {c: {f"{c}/{n}" for n in names} for c, names in _checkpoints(listing).items()}
            orphans_seen += bool(retention.plan(grouped, KEEP).orphans)
        code, output = run_once(args, seaweedfs.env())
        assert code == 0, output
    finally:
        watcher.stopping.set()
        watcher.join(10)
    assert watcher.polls > 10
    assert watcher.broken == []
    listing = list_bucket(client, target.bucket, target.prefix)
    remote = _checkpoints(listing)
    newest = [f"{TRIAL}/checkpoint_{n:06d}" for n in (number - 1, number)]
    complete = sorted(c for c, names in remote.items() if MANIFEST_NAME in names)
    assert complete == newest
    assert sorted(remote) == newest  # no orphan objects of older checkpoints
    for checkpoint in newest:
        assert remote[checkpoint] == {MANIFEST_NAME, *FILES}
    # Nothing local was deleted.
    assert len([p for p in trial.iterdir() if p.name.startswith("checkpoint_")]) == number
    fault_report(lives=LIVES, kills_leaving_orphans=orphans_seen, polls=watcher.polls)
