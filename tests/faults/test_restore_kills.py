"""SIGKILL during restores: the volume never holds a torn checkpoint.

A restore writes each checkpoint aside and renames it into place whole. Here the sidecar
is killed at a random point of a restore, again and again, on a volume that keeps what
each killed restore left aside (as a pod's volume does when only the sidecar restarts).
After every kill, each checkpoint dir in the volume must be exactly the published one.

The point is a random share of the checkpoint's bytes, read from ``/readyz`` as the
restore goes (a point in time would be too coarse: on loopback the whole restore takes
about 0.1 s, and a busy machine shifts it).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.sidecar_process import Sidecar, run_once, wait_for
from trialsync._engine.layout import RESTORING_PREFIX

KILLS = 20
TRIAL = "exp/trial_00000"
CKPT = f"{TRIAL}/checkpoint_000007"
MiB = 2**20


def digests(path: pathlib.Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file()
    }


def downloading(sidecar: Sidecar) -> bool:
    """Whether the sidecar's restore is past choosing what to restore (or done)."""
    status, text = sidecar.get("/readyz")
    return status == 200 or "files" in text


#: ``/readyz`` while a restore downloads (``restore.Progress.describe``).
PROGRESS = re.compile(r"restoring: \d+/\d+ files, (?P<done>[\d.]+) of (?P<total>[\d.]+) MiB")


def restored_share(sidecar: Sidecar) -> float:
    """The share of the restore's bytes the sidecar has downloaded: 1.0 once ready."""
    status, text = sidecar.get("/readyz")
    if status == 200:
        return 1.0
    found = PROGRESS.search(text)
    return float(found["done"]) / float(found["total"]) if found else 0.0


def left_aside(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob(f"{RESTORING_PREFIX}*")]


def test_sigkills_at_random_points_of_restores_leave_no_torn_checkpoint(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
    backend = Backend(
        "s3", f"s3://{seaweedfs.make_bucket()}/run", seaweedfs.storage_options(), seaweedfs.env()
    )
    source = tmp_path / "source"
    trial = trials.trial(source / "exp")
    sizes = {f"shard_{i:02d}.pt": rng.choice([64_000, MiB, 3 * MiB, 20 * MiB]) for i in range(24)}
    trials.checkpoint(trial, 7, sizes)
    old = time.time() - 60  # settled: --once publishes it
    for path in source.rglob("*"):
        os.utime(path, (old, old))
    code, out = run_once(["--root", str(source), "--upload-dir", backend.url], backend.env)
    assert code == 0, out
    published = digests(source / CKPT)

    root = tmp_path / "volume"
    root.mkdir()
    args = ["--root", str(root), "--upload-dir", backend.url, "--restore", "--part-size", "5242880"]
    whole = Sidecar(args, backend.env, str(tmp_path / "whole.log"))
    wait_for(lambda: downloading(whole), 60, interval=0.01, what="the restore's download")
    started = time.monotonic()
    wait_for(lambda: whole.get("/readyz")[0] == 200, 60, interval=0.01, what="a whole restore")
    duration = time.monotonic() - started  # of the download and the renames
    assert whole.stop() == 0
    assert digests(root / CKPT) == published

    counts = {"mid_restore": 0, "before_download": 0, "after_rename": 0, "torn": 0}
    for kill in range(KILLS):
        shutil.rmtree(root / CKPT, ignore_errors=True)  # a fresh volume, but what is aside
        sidecar = Sidecar(args, backend.env, str(tmp_path / f"kill-{kill}.log"))
        share = rng.uniform(0, 1)
        wait_for(
            lambda: restored_share(sidecar) >= share,  # noqa: B023 (called in this loop)
            60,
            interval=0.002,
            what=f"{share:.0%} of the restore",
        )
        sidecar.kill()
        here = root / CKPT
        if here.exists():
            counts["after_rename"] += 1
        elif left_aside(root):
            counts["mid_restore"] += 1
        else:
            counts["before_download"] += 1
        for checkpoint in root.rglob("checkpoint_*"):
            if digests(checkpoint) != published:
                counts["torn"] += 1

    final = Sidecar.start(args, backend.env, str(tmp_path / "final.log"))
    wait_for(lambda: final.get("/readyz")[0] == 200, 60, what="the last restore")
    assert final.stop() == 0
    fault_report(seed=fault_seed, kills=KILLS, restore_seconds=round(duration, 2), **counts)
    assert counts["torn"] == 0
    # The kills hit restores in the middle, not only before or after them.
    assert counts["mid_restore"] >= KILLS // 4, counts
    assert digests(root / CKPT) == published
    assert not left_aside(root)
