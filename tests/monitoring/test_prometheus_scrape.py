"""A real Prometheus on loopback scrapes a real sidecar syncing to a real S3 server
(SeaweedFS): after a checkpoint is published, the metrics arrive through Prometheus's
query API with the values the store's contents prove."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.object_stores import S3Bucket, S3Server
from tests.support import trials
from tests.support.monitoring import Prometheus
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._engine.layout import MANIFEST_NAME, Layout

MiB = 2**20
CHECKPOINT = "exp/trial_00000/checkpoint_000001"


@pytest.fixture
def sidecar(seaweedfs: S3Server, s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[Sidecar]:
    root = tmp_path / "root"
    # The trial dir is there at start: the first listing covers it.
    trials.trial(trials.experiment(root))
    args = ["--root", str(root), "--upload-dir", f"{s3_bucket.url}/up", "--checkpoint-settle", "60"]
    env = {
        **seaweedfs.env(),
        "TRIALSYNC_STORAGE_OPTIONS": json.dumps(seaweedfs.sidecar_options()),
    }
    started = Sidecar.start(args, env, str(tmp_path / "sidecar.log"))
    yield started
    started.stop()


@pytest.fixture
def prometheus(sidecar: Sidecar, tmp_path: Path) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus({"trialsync-sidecar": [f"127.0.0.1:{sidecar.port}"]}, workdir,
                        labels={"pod": "trainer-0"})  # fmt: skip
    try:
        wait_for(server.ready, 60, what="prometheus ready")
        yield server
    finally:
        server.stop()


def test_prometheus_gets_the_sidecars_metrics_after_a_checkpoint_is_published(
    seaweedfs: S3Server, s3_bucket: S3Bucket, sidecar: Sidecar, prometheus: Prometheus
) -> None:
    wait_for(lambda: prometheus.value('up{job="trialsync-sidecar"}') == 1, 30, what="a scrape")
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what="the first sync")
    assert prometheus.value("trialsync_sync_timeout_seconds") is not None
    root = Path(sidecar.args[sidecar.args.index("--root") + 1])
    files = {"model.pt": 3 * MiB + 5, "optimizer.pt": 1000}
    trials.checkpoint(root / "exp" / "trial_00000", 1, files)
    # The trigger declares it complete: no 60 s settle window.
    triggered = time.time()
    assert sidecar.post("/sync") == 202
    fs = seaweedfs.filesystem()
    manifest = f"{s3_bucket.name}/up/{CHECKPOINT}/{MANIFEST_NAME}"
    wait_for(lambda: fs.exists(manifest), 60, what="the manifest")
    published = time.time()

    # What the store holds decides the expected values: one PUT per object (all small),
    # and the bytes of each kind of file.
    fs.invalidate_cache()
    found = fs.find(f"{s3_bucket.name}/up", detail=True)
    objects = {name.split("/up/", 1)[1]: int(info["size"]) for name, info in found.items()}
    layout = Layout()
    by_kind: dict[str, int] = {}
    for rel, size in objects.items():
        placement = layout.place(rel)
        if placement is not None:
            by_kind[placement.kind.value] = by_kind.get(placement.kind.value, 0) + size
    assert by_kind["checkpoint"] == sum(files.values())

    def arrived() -> bool:
        count = prometheus.value("trialsync_publish_latency_seconds_count")
        puts = prometheus.value('trialsync_store_requests_total{operation="put"}')
        return count == 1 and puts == len(objects)

    wait_for(arrived, 30, what="the publish in prometheus")
    assert prometheus.value("trialsync_checkpoints_published_total") == 1
    for kind, size in by_kind.items():
        assert prometheus.value(f'trialsync_uploaded_bytes_total{{kind="{kind}"}}') == size
    # Complete at the trigger, published once its manifest was written.
    latency = prometheus.value("trialsync_publish_latency_seconds_sum")
    assert latency is not None
    assert 0 < latency <= published - triggered + 1
    in_bucket = prometheus.value('trialsync_publish_latency_seconds_bucket{le="10.0"}')
    assert in_bucket == 1
    # Listings: the readiness probe, the first listing, and the one that verified the
    # checkpoint; nothing was deleted or read whole.
    assert (prometheus.value('trialsync_store_requests_total{operation="list"}') or 0) >= 3
    assert prometheus.value('trialsync_store_requests_total{operation="delete"}') == 0
    per_sync = prometheus.value("sum(trialsync_store_requests_total) / sum(trialsync_syncs_total)")
    assert per_sync is not None
    assert per_sync > 0
    # The data-loss window restarted at the publish.
    window = prometheus.value("trialsync_data_loss_window_seconds")
    assert window is not None
    assert window <= time.time() - published + 2
    assert prometheus.value("trialsync_failing_since_timestamp_seconds") == 0
    # Prometheus has exactly what the sidecar serves.
    for name in ("trialsync_store_requests_total", "trialsync_uploaded_bytes_total"):
        assert sum(prometheus.query(name).values()) == sidecar.metric(name)
