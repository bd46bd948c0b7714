"""SIGKILL at random moments while a trainer writes: nothing half-published, nothing lost."""

from __future__ import annotations

import pathlib
import random
import time
from collections.abc import Callable
from typing import Any

from localcluster.processes import free_port
from tests.faults.harness import Target, sidecar_args, start_trainer
from tests.support.checkpoint_audit import Truth, half_published, leaked, lost
from tests.support.sidecar_process import Sidecar, run_once

KILLS = 20


def test_sigkill_at_random_moments_neither_half_publishes_nor_loses_a_checkpoint(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
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
        "--trigger-port",
        str(port),
        "--num-to-keep",
        "3",
        "--stop-file",
        str(stop),
    )
    reader = target.reader()
    reader.start()
    lives = []
    try:
        for life in range(KILLS):
            sidecar = Sidecar(args, seaweedfs.env(), str(tmp_path / f"sidecar-{life}.log"), port)
            time.sleep(rng.uniform(0.3, 4.0))  # at start-up, mid-upload, mid-publish ...
            alive = sidecar.proc.poll() is None
            sidecar.kill()
            assert alive, f"seed {fault_seed}: the sidecar exited by itself:\n{sidecar.log()}"
            lives.append(sidecar)
    finally:
        stop.touch()
        trainer.wait(120)
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
    fault_report(
        seed=fault_seed,
        kills=len(lives),
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
