"""SIGTERM while a checkpoint file still grows: published whole or not at all, and the exit
code says which."""

from __future__ import annotations

import hashlib
import pathlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from localcluster.trainer import s3_etag
from tests.faults.harness import Target, sidecar_args
from tests.support.checkpoint_audit import checkpoint_files, list_bucket, read_manifest
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.layout import MANIFEST_NAME

CKPT = "exp/trial_00000/checkpoint_000001"
BUDGET = 6.0  # --final-sync-timeout
SETTLE = 1.0


def grow(path: pathlib.Path, rng: random.Random, stop: threading.Event) -> None:
    """Append 256 KiB every 50 ms until ``stop``, as a slow trainer saving a tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        while not stop.is_set():
            handle.write(rng.randbytes(256 * 2**10))
            handle.flush()
            time.sleep(0.05)


def test_sigterm_while_a_checkpoint_grows_publishes_it_whole_or_not_at_all(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
    # The growth stops soon after SIGTERM (the checkpoint can settle in time) or only
    # after the budget (it cannot): both outcomes, twice each, in a seeded order.
    stops = [rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)]
    stops += [rng.uniform(BUDGET + 1, BUDGET + 3), rng.uniform(BUDGET + 1, BUDGET + 3)]
    rng.shuffle(stops)
    outcomes: dict[str, int] = {"published_whole": 0, "withheld": 0}
    wrong: list[str] = []
    for run, stop_after in enumerate(stops):
        target = Target.make(seaweedfs)
        root = tmp_path / f"root-{run}"
        root.mkdir()
        args = sidecar_args(
            root,
            target,
            *("--checkpoint-settle", str(SETTLE), "--final-sync-timeout", str(BUDGET)),
        )
        sidecar = Sidecar.start(args, seaweedfs.env(), str(tmp_path / f"sidecar-{run}.log"))
        wait_for(lambda s=sidecar: s.get("/readyz")[0] == 200, 30, what="the first sync")
        stop = threading.Event()
        model = root / CKPT / "model.pt"
        grower = threading.Thread(target=grow, args=(model, random.Random(rng.random()), stop))
        grower.start()
        try:
            time.sleep(rng.uniform(1.0, 2.5))  # some of it is uploaded (it never settles)
            sidecar.proc.send_signal(15)
            signalled = time.monotonic()
            threading.Timer(stop_after, stop.set).start()
            code = sidecar.stop(timeout=BUDGET + 20)
            took = time.monotonic() - signalled
        finally:
            stop.set()
            grower.join()
        data = model.read_bytes()
        listing = list_bucket(target.server.client(), target.bucket, target.prefix)
        manifest = read_manifest(
            target.server.client(), target.bucket, f"{target.prefix}/{CKPT}/{MANIFEST_NAME}"
        )
        whole = manifest == {"model.pt": len(data)} and checkpoint_files(listing, CKPT) == {
            "model.pt": (len(data), s3_etag(data, 5 * 2**20))
        }
        what = f"run {run} (growth stopped {stop_after:.1f}s after SIGTERM, exit {code})"
        if code == 0 and whole:
            outcomes["published_whole"] += 1
        elif code == 1 and manifest is None:
            outcomes["withheld"] += 1
        else:
            md5 = hashlib.md5(data).hexdigest()
            wrong.append(f"{what}: manifest {manifest}, {len(data)} bytes, md5 {md5}")
        if took > BUDGET + 3:
            wrong.append(f"{what}: exited {took:.1f}s after SIGTERM, budget {BUDGET}s")
    fault_report(
        seed=fault_seed, sigterms=len(stops), **outcomes, half_published_or_wrong_exit=len(wrong)
    )
    assert wrong == [], f"seed {fault_seed}: {wrong}"
    assert outcomes["published_whole"], outcomes  # both outcomes were really exercised
    assert outcomes["withheld"], outcomes
