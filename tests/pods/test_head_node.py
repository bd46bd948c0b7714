"""Seed scenario 3 on a real node: workers sync their trial dirs to the head pod through a
Service, by its DNS name, with no object storage at all."""

from __future__ import annotations

import pytest

from localcluster.harness import Cluster, container_status
from tests.pods.trial_pods import (
    FAST_SPEC,
    MANIFEST_NAME,
    RESTRICTED,
    SIDECAR_NAME,
    head_objects,
    injected_pod,
    syncconfig_view,
    trainer,
    trainer_events,
    trial_volume_files,
    written_files,
)
from trialsync import contract

pytestmark = pytest.mark.timeout(600)


def test_workers_sync_trial_dirs_to_the_head_through_its_service(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    # No uploadDir: workers sync to the head node, through the Service and with the token
    # Secret the operator would make.
    view = syncconfig_view(cluster, ns, FAST_SPEC)
    head_objects(cluster, view)

    # The head: a driver container that idles, and the sidecar serving the head-node
    # service on its port.
    driver = {
        "name": "driver",
        "image": cluster.images.sidecar,
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "securityContext": RESTRICTED,
    }
    head = injected_pod(cluster, view, "head", [driver], role="head", grace_seconds=5)
    head["spec"].pop("restartPolicy")  # the driver runs until the test deletes the namespace
    head_sidecar = next(c for c in head["spec"]["initContainers"] if c["name"] == SIDECAR_NAME)
    assert [p["containerPort"] for p in head_sidecar["ports"]] == [
        contract.HTTP_PORT,
        contract.HEAD_PORT,
    ]
    cluster.apply(head, ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready")

    workers = {}
    for i in range(2):
        name = f"worker-{i}"
        workers[name] = f"trial_{i}"
        worker = trainer(
            cluster.images.sidecar, trial=f"trial_{i}", checkpoints=2, size=65536, trigger=True
        )
        cluster.apply(injected_pod(cluster, view, name, [worker]), ns)
    for name in workers:
        done = cluster.poll_pod(
            name, ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "finished", 180
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert container_status(done, SIDECAR_NAME)["state"]["terminated"]["exitCode"] == 0

    on_head = trial_volume_files(cluster, "head", ns, "driver")
    for name, trial in workers.items():
        written = written_files(trainer_events(cluster.logs(name, ns, "trainer")))
        assert len(written) == 4
        for rel, sha in written.items():
            assert on_head.get(f"exp/{trial}/{rel}") == sha, (trial, rel, sorted(on_head))
        for checkpoint in ("checkpoint_000001", "checkpoint_000002"):
            assert f"exp/{trial}/{checkpoint}/{MANIFEST_NAME}" in on_head
        assert f"exp/{trial}/progress.csv" in on_head  # the whole trial dir, artifacts too
