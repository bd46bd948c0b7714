"""Seed scenario 2 on a real node: a training Job's checkpoints reach object storage."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster, Manifest
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

pytestmark = pytest.mark.timeout(600)

CHECKPOINTS = 3


def test_job_completes_with_every_checkpoint_published(
    cluster: Cluster,
    cluster_s3: ClusterS3,
    cluster_namespace: str,
    cluster_timings: dict[str, float],
) -> None:
    ns = cluster_namespace
    bucket = cluster_s3.server.make_bucket()
    endpoint = cluster_s3.install(cluster, ns)
    view = syncconfig_view(cluster, ns, s3_spec(cluster_s3, endpoint, f"s3://{bucket}/experiments"))
    pod = injected_pod(
        cluster,
        view,
        "unused",
        [
            trainer(
                cluster.images.sidecar,
                trial="trial_0",
                checkpoints=CHECKPOINTS,
                size=512 * 1024,
                trigger=True,
            )
        ],
    )
    template = {
        "metadata": {
            "labels": {**pod["metadata"]["labels"], "app": "train"},
            "annotations": pod["metadata"]["annotations"],
        },
        "spec": pod["spec"],
    }
    job: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {"backoffLimit": 0, "template": template},
    }

    created = time.monotonic()
    cluster.apply(job, ns)
    cluster.wait_for("job", "train", ns, "condition=Complete", timeout=180)
    cluster_timings["Job created to Complete"] = time.monotonic() - created

    (pod_name,) = cluster.kube.kubectl(
        "get", "pods", "-n", ns, "-l", "job-name=train", "-o", "jsonpath={.items[*].metadata.name}"
    ).stdout.split()
    events = trainer_events(cluster.logs(pod_name, ns, "trainer"))
    assert events[-1]["event"] == "done"
    written = written_files(events)
    assert len(written) == 2 * CHECKPOINTS

    # Every checkpoint file is in the bucket with the trainer's bytes, and each checkpoint
    # has its manifest, which lists exactly those files.
    objects = bucket_objects(cluster_s3.server, bucket, "experiments/exp/trial_0/")
    prefix = "experiments/exp/trial_0/"
    for rel, sha in written.items():
        assert hashlib.sha256(objects[prefix + rel]).hexdigest() == sha, rel
    for i in range(1, CHECKPOINTS + 1):
        manifest = json.loads(objects[f"{prefix}checkpoint_{i:06d}/{MANIFEST_NAME}"])
        assert manifest["checkpoint"] == f"exp/trial_0/checkpoint_{i:06d}"
        assert set(manifest["files"]) == {"model.bin", "meta.json"}, manifest
        size = len(objects[f"{prefix}checkpoint_{i:06d}/model.bin"])
        assert manifest["files"]["model.bin"]["size"] == size
    assert prefix + "progress.csv" in objects  # seed scenario 4 rides along

    # The sidecar's own account, through kubectl logs: it was stopped after the trainer
    # and its final sync made everything durable.
    records = sidecar_records(cluster, pod_name, ns)
    messages = [r["msg"] for r in records]
    assert "SIGTERM: final sync of everything" in messages
    (final,) = [r for r in records if r["msg"] == "final sync finished"]
    assert final["durable"] is True, records
    published = {r["path"] for r in records if r["msg"] == "checkpoint published"}
    assert published == {f"exp/trial_0/checkpoint_{i:06d}" for i in range(1, CHECKPOINTS + 1)}
    status = cluster.get("pod", pod_name, ns)
    (sidecar_state,) = [
        s for s in status["status"]["initContainerStatuses"] if s["name"] == SIDECAR_NAME
    ]
    assert sidecar_state["state"]["terminated"]["exitCode"] == 0
