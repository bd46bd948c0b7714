"""Seed scenario 3 on a real node: workers sync their trial dirs to the head pod through a
Service, by its DNS name, with no object storage at all."""

from __future__ import annotations

import secrets

import pytest

from localcluster.harness import Cluster, container_status
from tests.pods.trial_pods import (
    FAST_SIDECAR_ENV,
    MANIFEST_NAME,
    RESTRICTED,
    TRIAL_ROOT,
    trainer,
    trainer_events,
    trial_pod,
    trial_volume_files,
    written_files,
)
from tests.support.sidecar_pod import HEAD_PORT, SIDECAR_NAME, SidecarSpec, inject

pytestmark = pytest.mark.timeout(600)

TOKEN_SECRET = "head-token"


def test_workers_sync_trial_dirs_to_the_head_through_its_service(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": TOKEN_SECRET},
            "stringData": {"token": secrets.token_urlsafe(24)},
        },
        ns,
    )
    token = {"TRIALSYNC_HEAD_TOKEN": (TOKEN_SECRET, "token")}

    # The head: a driver container that idles, and the sidecar serving the head-node
    # service on 9747 (role head, no upload dir).
    head_sidecar = SidecarSpec(
        image=cluster.images.sidecar,
        mount_path=TRIAL_ROOT,
        role="head",
        env=FAST_SIDECAR_ENV,
        secret_env=token,
    )
    driver = {
        "name": "driver",
        "image": cluster.images.sidecar,
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "securityContext": RESTRICTED,
    }
    head = inject(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "head", "labels": {"role": "head"}},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [driver]},
        },
        head_sidecar,
    )
    cluster.apply(head, ns)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "trial-head"},
            "spec": {
                "selector": {"role": "head"},
                "ports": [{"name": "head", "port": HEAD_PORT, "targetPort": HEAD_PORT}],
            },
        },
        ns,
    )
    cluster.wait_for("pod", "head", ns, "condition=Ready")

    head_url = f"http://trial-head.{ns}.svc:{HEAD_PORT}"
    workers = {}
    for i in range(2):
        sidecar = SidecarSpec(
            image=cluster.images.sidecar,
            mount_path=TRIAL_ROOT,
            env={**FAST_SIDECAR_ENV, "TRIALSYNC_HEAD_URL": head_url},
            secret_env=token,
        )
        name = f"worker-{i}"
        workers[name] = f"trial_{i}"
        cluster.apply(
            trial_pod(
                name,
                sidecar,
                [
                    trainer(
                        cluster.images.sidecar,
                        trial=f"trial_{i}",
                        checkpoints=2,
                        size=65536,
                        trigger=True,
                    )
                ],
            ),
            ns,
        )
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
