"""The operator beside the local cluster, end to end: its webhook injects real pods that run.

The operator runs as a process on the host's loopback; the apiserver, inside the
cluster's network namespace, reaches its webhook at the same address through a forwarder
(``reach_host``). Pods opt in with the label and annotations only: everything else (the
sidecar, its settings, the head-node Service and token) comes from the operator.
"""

from __future__ import annotations

import json

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster, container_status
from tests.pods.trial_pods import (
    MANIFEST_NAME,
    RESTRICTED,
    TRIAL_ROOT,
    apply_s3_syncconfig,
    bucket_objects,
    job_pod,
    opted_in,
    sidecar_records,
    trainer,
    trainer_events,
    training_job,
    trial_volume_files,
    written_files,
)
from tests.support.operator_process import Operator
from tests.support.pods import sidecars, syncconfig
from trialsync import contract
from trialsync_operator import names

pytestmark = pytest.mark.timeout(600)


def _wait_ready_condition(cluster: Cluster, ns: str) -> None:
    cluster.wait_for("syncconfig", "exp", ns, "condition=Ready", 60)


def test_a_labelled_job_is_injected_runs_to_complete_and_publishes_its_checkpoints(
    cluster: Cluster, operator_beside: Operator, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns)
    job = training_job(
        "train", opted_in("exp"), trainer(cluster.images.sidecar, trial="t0", checkpoints=3)
    )
    cluster.apply(job, ns)
    cluster.wait_for("job", "train", ns, "condition=Complete", 240)

    pod = job_pod(cluster, "train", ns)
    assert len(sidecars(pod)) == 1
    status = json.loads(pod["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["config"] == "exp"
    sidecar = container_status(pod, names.SIDECAR_NAME)
    assert sidecar["state"]["terminated"]["exitCode"] == 0
    events = trainer_events(cluster.logs(pod["metadata"]["name"], ns, "trainer"))
    # The startup probe held the trainer until the sidecar was ready.
    assert events[0]["readyz"] == 200
    objects = bucket_objects(cluster_s3.server, bucket, "results/")
    written = written_files(events)
    assert len(written) == 6
    for rel in written:
        checkpoint = rel.split("/")[0]
        assert f"results/exp/t0/{checkpoint}/{MANIFEST_NAME}" in objects
        assert f"results/exp/t0/{rel}" in objects
    for checkpoint in ("checkpoint_000001", "checkpoint_000002", "checkpoint_000003"):
        manifest = json.loads(objects[f"results/exp/t0/{checkpoint}/{MANIFEST_NAME}"])
        assert sorted(manifest["files"]) == sorted(
            rel.split("/", 1)[1] for rel in written if rel.startswith(checkpoint)
        )


def test_a_storage_path_below_the_mount_is_synced_without_a_level_added(
    cluster: Cluster, operator_beside: Operator, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    """Ray's storage_path a directory below the trial volume (the annotation names it):
    the remote layout is the storage path's own, with neither the mount nor the directory
    as an extra level."""
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns)
    metadata = opted_in("exp")
    storage_path = f"{TRIAL_ROOT}/ray_results"
    metadata["annotations"][names.STORAGE_PATH_ANNOTATION] = storage_path
    job = training_job(
        "below",
        metadata,
        trainer(cluster.images.sidecar, trial="t0", checkpoints=2, root=storage_path),
    )
    cluster.apply(job, ns)
    cluster.wait_for("job", "below", ns, "condition=Complete", 240)
    objects = bucket_objects(cluster_s3.server, bucket, "results/")
    assert objects
    assert all(key.startswith("results/exp/t0/") for key in objects), sorted(objects)
    checkpoints = {key.split("/")[3] for key in objects if "/checkpoint_" in key}
    assert checkpoints == {"checkpoint_000001", "checkpoint_000002"}
    for index in (1, 2):
        assert f"results/exp/t0/checkpoint_{index:06d}/{MANIFEST_NAME}" in objects


def test_with_mirror_deletes_the_sidecar_keeps_its_record_on_the_volume_and_mirrors_deletions(
    cluster: Cluster, operator_beside: Operator, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns, mirrorDeletes=True)
    # Ray's num_to_keep=1: each checkpoint is deleted once the next one is written (3 s
    # later; the trainer announces each, so it is published well before).
    job = training_job(
        "keep1",
        opted_in("exp"),
        trainer(
            cluster.images.sidecar, trial="t0", checkpoints=3, interval=3, keep=1, trigger=True
        ),
    )
    cluster.apply(job, ns)
    cluster.wait_for("job", "keep1", ns, "condition=Complete", 240)

    pod = job_pod(cluster, "keep1", ns)
    [sidecar] = sidecars(pod)
    [trial_mount] = [m for m in sidecar["volumeMounts"] if m["mountPath"] == contract.TRIAL_MOUNT]
    assert not trial_mount.get("readOnly")
    events = trainer_events(cluster.logs(pod["metadata"]["name"], ns, "trainer"))
    assert [e["name"] for e in events if e["event"] == "deleted"] == [
        "checkpoint_000001",
        "checkpoint_000002",
    ]
    records = sidecar_records(cluster, pod["metadata"]["name"], ns)
    # The record of sent checkpoints could be written on the trial volume...
    assert not [r for r in records if r["msg"].startswith("cannot write")], records
    # ...and the deletions reached the bucket: only the newest checkpoint is left.
    objects = bucket_objects(cluster_s3.server, bucket, "results/exp/t0/")
    left = {key.split("/")[3] for key in objects if "/checkpoint_" in key}
    assert left == {"checkpoint_000003"}
    # Each of the three was published (its manifest in the bucket) before the trainer
    # deleted it, and the deletions of the first two, and only those, were mirrored.
    mirrored = {r["path"] for r in records if r["msg"] == "checkpoint deletion mirrored"}
    published = {r["path"] for r in records if r["msg"] == "checkpoint published"}
    every = {f"exp/t0/checkpoint_{i:06d}" for i in (1, 2, 3)}
    assert published == every, records
    assert mirrored == every - {"exp/t0/checkpoint_000003"}, records
    order = [(r["msg"], r.get("path")) for r in records]
    for path in mirrored:
        published_at = order.index(("checkpoint published", path))
        assert published_at < order.index(("checkpoint deletion mirrored", path)), path


def test_without_an_upload_dir_workers_reach_the_head_through_the_operators_service(
    cluster: Cluster, operator_beside: Operator, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(
        syncconfig(
            "exp", {"syncPeriod": 5, "checkpointSettleSeconds": 1, "finalSyncTimeoutSeconds": 20}
        ),
        ns,
    )
    _wait_ready_condition(cluster, ns)
    user = {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}
    driver = {
        "name": "driver",
        "image": cluster.images.sidecar,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "securityContext": RESTRICTED,
    }
    head = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "head", **opted_in("exp", "head")},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "securityContext": user,
            "containers": [driver],
        },
    }
    cluster.apply(head, ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready", 120)
    for i in range(2):
        worker = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"worker-{i}", **opted_in("exp")},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
                "securityContext": user,
                "containers": [
                    trainer(
                        cluster.images.sidecar,
                        trial=f"trial_{i}",
                        checkpoints=2,
                        size=65536,
                        trigger=True,
                    )
                ],
            },
        }
        cluster.apply(worker, ns)
    for i in range(2):
        done = cluster.poll_pod(
            f"worker-{i}",
            ns,
            lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
            "finished",
            180,
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]
        env = {e["name"]: e for e in sidecars(done)[0]["env"]}
        assert env["TRIALSYNC_HEAD_URL"]["value"] == names.head_url("exp", ns)
        assert env["TRIALSYNC_HEAD_URL"]["value"].startswith("https://")
        assert "TRIALSYNC_HEAD_CA_FILE" in env
        # The head's key never reaches a worker.
        volumes = done["spec"]["volumes"]
        [secret] = [v["secret"] for v in volumes if v["name"] == names.HEAD_SECRET_VOLUME]
        assert [item["key"] for item in secret["items"]] == ["token", "ca.crt"]

    on_head = trial_volume_files(cluster, "head", ns, "driver")
    for i in range(2):
        written = written_files(trainer_events(cluster.logs(f"worker-{i}", ns, "trainer")))
        assert len(written) == 4
        for rel, sha in written.items():
            assert on_head.get(f"exp/trial_{i}/{rel}") == sha, (i, rel, sorted(on_head))
        assert f"exp/trial_{i}/checkpoint_000002/{MANIFEST_NAME}" in on_head
