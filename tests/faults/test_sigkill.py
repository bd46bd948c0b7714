"""SIGKILL while a trainer writes: nothing half-published, nothing lost, nothing leaked.

A third of the kills come at random moments; the others are aimed: the bucket is polled
and the sidecar killed once it shows it uploading a checkpoint, or publishing one (all its
files up and its manifest not yet, or deleting it remotely): stopped (SIGSTOP) at each
sighting, it is killed if the bucket still shows it there (``aim_at``). Where each
kill really landed is judged afterwards, from the bucket at the kill and the sidecar's log
(``tests/faults/landings.py``), and the test asserts that enough of them landed where a
crash could break the contract.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from localcluster.processes import free_port
from tests.faults.harness import Target, sidecar_args, start_trainer
from tests.faults.landings import Landing, landing
from tests.support.checkpoint_audit import (
    Snapshot,
    Truth,
    half_published,
    leaked,
    list_bucket,
    lost,
    snapshot,
)
from tests.support.sidecar_process import Sidecar, run_once

#: Where the kills are aimed, in a seeded order: a third at random moments (start-up
#: included), a third mid-upload, a third mid-publish.
AIMS = ("anywhere", "mid-upload", "mid-publish") * 8
#: An aimed kill comes at the latest this long after the sidecar recovered its ledger (and
#: at the latest STARTUP_CAP after it started, if it never does).
AIM_TIMEOUT = 8.0
STARTUP_CAP = 60.0
#: Aiming mid-publish, the sidecar runs this long between two checks (see ``aim_at``).
SLICE = 0.005
#: After SIGSTOP, the time the store is given to carry out what the sidecar had sent.
SETTLE = 0.02
#: Of all the kills, at least so many landed there (an aimed kill can miss: at its
#: deadline, or when a request the sidecar had sent is carried out after the last check).
MIN_MID_UPLOAD = 5
MIN_MID_PUBLISH = 3


def test_sigkill_mid_upload_mid_publish_or_at_random_neither_half_publishes_nor_loses(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
    aims = list(AIMS)
    rng.shuffle(aims)
    target = Target.make(seaweedfs)
    root, log, stop = tmp_path / "root", tmp_path / "trainer.jsonl", tmp_path / "stop"
    root.mkdir()
    port = free_port()  # the same across restarts: the trainer triggers it
    # Only triggers publish while the trainer runs (the settle window is long), and
    # deletions (num_to_keep) are mirrored, also those made while the sidecar is dead.
    args = sidecar_args(root, target, "--checkpoint-settle", "30", "--mirror-deletes")
    trainer = start_trainer(
        root,
        log,
        fault_seed,
        *("--trigger-port", str(port), "--num-to-keep", "3", "--stop-file", str(stop)),
    )
    reader = target.reader()
    reader.start()
    bucket = Bucket(target.server.client(), target.bucket, target.prefix)
    truth_log = TruthLog(log)
    landings: list[tuple[str, Landing]] = []
    stops = 0
    try:
        for life, aim in enumerate(aims):
            # The bucket as this life finds it (a request the last life had sent whole
            # may have been carried out after its kill).
            began = bucket.snapshot()
            sidecar = Sidecar(args, seaweedfs.env(), str(tmp_path / f"sidecar-{life}.log"), port)
            started = time.monotonic()
            try:
                if aim == "anywhere":
                    time.sleep(rng.uniform(0.3, 4.0))  # at start-up, mid-upload, mid-publish ...
                else:
                    stops += aim_at(aim, began, bucket, truth_log, sidecar, started)
                alive = sidecar.proc.poll() is None
            finally:
                sidecar.kill()
            where = landing(began, bucket.snapshot(), truth_log.now(), sidecar.log())
            landings.append((aim, where))
            took = time.monotonic() - started
            print(f"kill {life}, aimed {aim}, after {took:.2f} s: {where.describe()}")
            assert alive, f"seed {fault_seed}: the sidecar exited by itself:\n{sidecar.log()}"
    finally:
        stop.touch()
        trainer.wait(120)
        bucket.client.close()
    checked_between_kills = len(reader.sightings)
    # Everything the trainer left is whole on disk now: one --once publishes it all.
    code, out = run_once(
        sidecar_args(root, target, "--checkpoint-settle", "1", "--mirror-deletes"),
        seaweedfs.env(),
        timeout=300,
    )
    time.sleep(2 * reader.interval)  # let the reader see the last manifests too
    reader.stop()
    truth = Truth.load(log)
    half = half_published(reader.sightings, truth)
    missing = lost(reader.client, target.bucket, target.prefix, truth)
    left = leaked(reader.client, target.bucket, target.prefix, truth)
    counts = landing_counts(landings)
    fault_report(
        seed=fault_seed,
        **counts,
        aim_stops=stops,
        checkpoints=len(truth.complete),
        deleted=len(truth.deleted),
        manifests_checked=len(reader.sightings),
        checked_between_kills=checked_between_kills,
        half_published=len(half),
        lost=len(missing),
        leaked=len(left),
    )
    assert code == 0, f"seed {fault_seed}: the final --once failed:\n{out[-3000:]}"
    assert not reader.errors, reader.errors
    assert half == [], f"seed {fault_seed}: half-published: {half}"
    assert missing == [], f"seed {fault_seed}: lost: {missing}"
    assert left == [], f"seed {fault_seed}: deleted locally, still in storage: {left}"
    # The reader did check manifests published between kills, not only the final ones.
    assert checked_between_kills > 0, "no manifest was published while the kills went on"
    # And the kills did land where a crash matters.
    assert counts["mid_upload"] >= MIN_MID_UPLOAD, f"seed {fault_seed}: {counts}"
    assert counts["mid_publish"] >= MIN_MID_PUBLISH, f"seed {fault_seed}: {counts}"


def landing_counts(landings: list[tuple[str, Landing]]) -> dict[str, int]:
    """How many kills landed where (a kill can land mid-upload of one checkpoint and
    mid-publish of another), and how many of the aimed ones landed where aimed."""
    wheres = [where for _, where in landings]
    return {
        "kills": len(wheres),
        "mid_upload": sum(where.mid_upload for where in wheres),
        "mid_publish": sum(where.mid_publish for where in wheres),
        "mid_publish_before_manifest": sum(bool(where.before_manifest) for where in wheres),
        "mid_publish_deleting": sum(bool(where.deleting) for where in wheres),
        "in_startup": sum(not where.recovered for where in wheres),
        "elsewhere": sum(
            where.recovered and not (where.mid_upload or where.mid_publish) for where in wheres
        ),
        "aimed": sum(aim != "anywhere" for aim, _ in landings),
        "aimed_and_hit": sum(aim != "anywhere" and hit(aim, where) for aim, where in landings),
    }


def hit(aim: str, where: Landing) -> bool:
    return where.mid_upload if aim == "mid-upload" else where.mid_publish


def aim_at(
    aim: str,
    began: Snapshot,
    bucket: Bucket,
    truth_log: TruthLog,
    sidecar: Sidecar,
    started: float,
) -> int:
    """Return with the sidecar stopped (SIGSTOP) where ``aim`` says, or ``AIM_TIMEOUT``
    after it recovered (its start-up takes longer on a busy machine: that time does not
    count); the caller kills it then. Returns how often the sidecar was stopped on the way.

    A sighting in a listing is some milliseconds old, and a checkpoint stays between its
    last file and its manifest for some tens of milliseconds only: killed at a sighting,
    the sidecar would often have moved on. So it is stopped at each sighting and, once the
    requests it had sent are carried out, the bucket is checked again: the kill lands
    where the check saw it. For ``mid-publish``, once a checkpoint is on its way (mid-upload)
    the sidecar runs in slices of ``SLICE`` seconds, stopped and checked after each, until
    a checkpoint is between its last file and its manifest (or no upload is left). To the
    sidecar that is a slow machine; SIGSTOP and SIGCONT change nothing else.
    """
    stops = 0
    stopped = False
    deadline = started + STARTUP_CAP
    recovered = False
    while time.monotonic() < deadline:
        if stopped or aim != "mid-publish":
            now = bucket.snapshot()
        else:  # polled back to back: a listing of the objects alone, about 10 ms
            now = Snapshot(bucket.objects(), began.uploads)
        where = landing(began, now, truth_log.now(), sidecar.log())
        if not where.recovered:  # nothing goes up before: leave it the machine meanwhile
            time.sleep(0.05)
            continue
        if not recovered:
            recovered = True
            deadline = min(deadline, time.monotonic() + AIM_TIMEOUT)
        if hit(aim, where) and stopped:
            return stops
        if hit(aim, where) or (aim == "mid-publish" and where.mid_upload):
            if stopped:  # a checkpoint on its way: one more slice
                sidecar.proc.send_signal(signal.SIGCONT)
                time.sleep(SLICE)
            sidecar.proc.send_signal(signal.SIGSTOP)
            stopped = True
            stops += 1
            time.sleep(SETTLE)
            continue
        if stopped:
            sidecar.proc.send_signal(signal.SIGCONT)
            stopped = False
        if aim != "mid-publish":
            time.sleep(0.01)
    return stops


@dataclasses.dataclass
class Bucket:
    client: Any
    name: str
    prefix: str

    def snapshot(self) -> Snapshot:
        return snapshot(self.client, self.name, self.prefix)

    def objects(self) -> dict[str, tuple[int, str]]:
        return list_bucket(self.client, self.name, self.prefix)


class TruthLog:
    """The trainer's truth log as it grows, read again only when it did."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.size = -1
        self.truth = Truth({}, set())

    def now(self) -> Truth:
        size = self.path.stat().st_size if self.path.exists() else self.size
        if size != self.size:
            self.truth, self.size = Truth.load(self.path), size
        return self.truth
