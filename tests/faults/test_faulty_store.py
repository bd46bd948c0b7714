"""A store that fails: 5xx answers, connection resets and a stall past sync_timeout."""

from __future__ import annotations

import pathlib
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.faults.harness import Target, sidecar_args, start_trainer
from tests.support.checkpoint_audit import Truth, half_published, leaked, lost
from tests.support.fault_proxy import FaultProxy
from tests.support.sidecar_process import Sidecar, wait_for

SYNC_TIMEOUT = 4.0
CHECKPOINTS = 40


def test_a_faulty_store_neither_half_publishes_nor_loses_a_checkpoint(
    seaweedfs: Any,
    tmp_path: pathlib.Path,
    fault_seed: int,
    fault_report: Callable[..., None],
) -> None:
    rng = random.Random(fault_seed)
    target = Target.make(seaweedfs)
    root, log = tmp_path / "root", tmp_path / "trainer.jsonl"
    root.mkdir()
    upstream = urlsplit(seaweedfs.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    with FaultProxy(
        upstream.hostname, upstream.port, fault_seed, error_rate=0.05, reset_rate=0.05
    ) as proxy:
        proxy.stall_request(after=rng.randint(20, 60), seconds=SYNC_TIMEOUT + 4)
        endpoint = {
            "AWS_ENDPOINT_URL": proxy.endpoint_url,
            "AWS_ENDPOINT_URL_S3": proxy.endpoint_url,
        }
        args = sidecar_args(
            root,
            target,
            *("--sync-timeout", str(SYNC_TIMEOUT), "--max-backoff", "2"),
            *("--checkpoint-settle", "30", "--mirror-deletes", "--final-sync-timeout", "60"),
        )
        sidecar = Sidecar.start(
            args, {**seaweedfs.env(), **endpoint}, str(tmp_path / "sidecar.log")
        )
        reader = target.reader()
        reader.start()
        trainer = start_trainer(
            root,
            log,
            fault_seed,
            "--trigger-port",
            str(sidecar.port),
            "--num-to-keep",
            "4",
            "--checkpoints",
            str(CHECKPOINTS),
        )
        try:
            assert trainer.wait(300) == 0
            truth = Truth.load(log)
            wait_for(lambda: proxy.stalls == 1, 60, what="the stalled request")
            wait_for(
                lambda: not lost(reader.client, target.bucket, target.prefix, truth),
                120,
                interval=1,
                what="every checkpoint published through the faults",
            )
            timeouts = sidecar.metric('trialsync_sync_failures_total{reason="timeout"}')
            failures = sidecar.metric("trialsync_sync_failures_total")
        finally:
            code = sidecar.stop(timeout=90)
            reader.stop()
    truth = Truth.load(log)
    half = half_published(reader.sightings, truth)
    missing = lost(reader.client, target.bucket, target.prefix, truth)
    left = leaked(reader.client, target.bucket, target.prefix, truth)
    fault_report(
        seed=fault_seed,
        checkpoints=len(truth.complete),
        deleted=len(truth.deleted),
        **{f"injected_{k}": v for k, v in proxy.faults().items()},
        failed_syncs=int(failures),
        timed_out_syncs=int(timeouts),
        manifests_checked=len(reader.sightings),
        half_published=len(half),
        lost=len(missing),
        leaked=len(left),
    )
    assert code == 0, f"seed {fault_seed}: the final sync failed:\n{sidecar.log()[-3000:]}"
    assert timeouts >= 1, "the stall did not hit a sync"
    assert proxy.errors > 0, proxy.faults()
    assert proxy.resets > 0, proxy.faults()
    assert not reader.errors, reader.errors
    assert half == [], f"seed {fault_seed}: half-published: {half}"
    assert missing == [], f"seed {fault_seed}: lost: {missing}"
    stalled = proxy.stalled_requests
    assert left == [], f"seed {fault_seed}: deleted, still in storage: {left} {stalled}"
