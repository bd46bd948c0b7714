"""Rotated credentials reach a running sidecar on a real node.

The credentials Secret is updated in the middle of a run, after the old keys were revoked
on the S3 server (the worst order: the sidecar's keys stop working before the new ones
arrive). The kubelet brings the new version into the Secret volume, the sidecar reads it
without a restart, and every checkpoint is published complete.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.configs import KUBELET_SYNC_FREQUENCY_S
from localcluster.harness import Cluster
from localcluster.object_stores import start_seaweedfs
from tests.pods.trial_pods import (
    MANIFEST_NAME,
    SIDECAR_NAME,
    bucket_objects,
    injected_pod,
    s3_spec,
    sidecar_records,
    syncconfig_view,
    trainer,
    trainer_events,
    written_files,
)
from tests.support.sidecar_process import wait_for

pytestmark = pytest.mark.timeout(600)

CHECKPOINTS = 8
#: The bound docs/operator.md states: the kubelet refreshes a Secret volume at its next
#: sync of the pod (syncFrequency, 60 s by default and shorter on the test node, with up to
#: 50% jitter), then the sidecar notices within 2 s and syncs.
ROTATION_BOUND_S = 1.5 * KUBELET_SYNC_FREQUENCY_S + 2 + 20


@pytest.fixture
def own_s3(cluster: Cluster) -> Iterator[ClusterS3]:
    """A SeaweedFS of this test's own: its keys are revoked, which the session's must not be."""
    server = start_seaweedfs()
    forwarder = cluster.expose(int(server.endpoint_url.rsplit(":", 1)[1]))
    try:
        assert cluster.pod_reachable_host is not None
        yield ClusterS3(server, cluster.pod_reachable_host, forwarder.address[1])
    finally:
        forwarder.close()
        server.stop()


def _published(s3: ClusterS3, bucket: str, prefix: str) -> set[str]:
    client = s3.server.client()
    try:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return {
            item["Key"].split("/")[-2]
            for item in listing.get("Contents", [])
            if item["Key"].endswith(MANIFEST_NAME)
        }
    finally:
        client.close()


def refused(records: list[dict[str, Any]]) -> bool:
    """Whether the sidecar logged a sync refused for its credentials."""
    return any(r.get("reason") == "credentials" for r in records)


def test_a_rotated_secret_reaches_the_running_sidecar_and_no_checkpoint_is_lost(
    cluster: Cluster,
    own_s3: ClusterS3,
    cluster_namespace: str,
    cluster_timings: dict[str, float],
) -> None:
    ns = cluster_namespace
    bucket = own_s3.server.make_bucket()
    endpoint = own_s3.install(cluster, ns)
    view = syncconfig_view(cluster, ns, s3_spec(own_s3, endpoint, f"s3://{bucket}/experiments"))
    pod = injected_pod(
        cluster,
        view,
        "rotating",
        [
            trainer(
                cluster.images.sidecar,
                trial="trial_0",
                checkpoints=CHECKPOINTS,
                size=256 * 1024,
                interval=5,
                trigger=True,
                then="sleep",
            )
        ],
        grace_seconds=60,
    )
    cluster.apply(pod, ns)
    prefix = "experiments/exp/trial_0/"
    wait_for(lambda: _published(own_s3, bucket, prefix), 120, what="a first checkpoint")

    # The old keys stop working; once the sidecar has been refused with them (at its next
    # checkpoint, every 5 s), the Secret is given the new ones.
    own_s3.server.rotate_keys()
    wait_for(
        lambda: refused(sidecar_records(cluster, "rotating", ns)),
        60,
        what="the revoked keys refused",
    )
    own_s3.install(cluster, ns)
    rotated = time.monotonic()
    before = _published(own_s3, bucket, prefix)
    wait_for(
        lambda: _published(own_s3, bucket, prefix) - before,
        ROTATION_BOUND_S,
        what="a checkpoint published with the new keys",
    )
    cluster_timings["credentials rotated to the next publish"] = time.monotonic() - rotated
    wanted = {f"checkpoint_{i:06d}" for i in range(1, CHECKPOINTS + 1)}
    wait_for(lambda: _published(own_s3, bucket, prefix) >= wanted, 120, what="every checkpoint")

    status = cluster.get("pod", "rotating", ns)["status"]
    (sidecar,) = [s for s in status["initContainerStatuses"] if s["name"] == SIDECAR_NAME]
    if sidecar["restartCount"]:  # the new keys must come without a restart
        previous = cluster.kube.kubectl(
            "logs", "rotating", "-n", ns, "-c", SIDECAR_NAME, "--previous", check=False
        )
        pytest.fail(
            f"the sidecar restarted: {sidecar.get('lastState')}\n"
            + "\n".join((previous.stdout + previous.stderr).splitlines()[-40:])
        )
    events = trainer_events(cluster.logs("rotating", ns, "trainer"))
    written = written_files(events)
    assert len(written) == 2 * CHECKPOINTS

    objects = bucket_objects(own_s3.server, bucket, prefix)
    for rel, sha in written.items():
        assert hashlib.sha256(objects[prefix + rel]).hexdigest() == sha, rel
    for name in wanted:
        manifest = json.loads(objects[f"{prefix}{name}/{MANIFEST_NAME}"])
        assert set(manifest["files"]) == {"model.bin", "meta.json"}, manifest
        for file, entry in manifest["files"].items():
            assert entry["size"] == len(objects[f"{prefix}{name}/{file}"]), (name, file)
