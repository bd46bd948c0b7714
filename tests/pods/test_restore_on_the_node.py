"""Restore on start on a real node: a Job's pod is killed after checkpoint 3, and its retry,
on a fresh emptyDir, finds checkpoint 3 before its trainer's first instruction and goes on
to checkpoint 6. And a pod that restores a 1 GiB checkpoint: from its creation to its
trainer's first instruction. The operator injects every pod; nothing is set up by hand."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster
from tests.pods.trial_pods import (
    FAST_SPEC,
    MANIFEST_NAME,
    RESTRICTED,
    apply_s3_syncconfig,
    bucket_objects,
    opted_in,
    sidecar_records,
    trainer,
    trainer_events,
    training_job,
    trial_volume_files,
)
from tests.support.operator_process import Operator
from tests.support.pods import syncconfig
from tests.support.sidecar_process import run_once, wait_for
from trialsync._engine.layout import owner_marker
from trialsync_operator import names

pytestmark = pytest.mark.timeout(600)

TRIAL = "exp/t0"


def job_pods(cluster: Cluster, job: str, ns: str) -> list[dict[str, Any]]:
    out = cluster.kube.kubectl("get", "pods", "-n", ns, "-l", f"job-name={job}", "-o", "json")
    pods: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def events_of(cluster: Cluster, pod: str, ns: str) -> list[dict[str, Any]]:
    return trainer_events(cluster.logs(pod, ns, "trainer"))


def kill_after_checkpoint_3_and_retry(
    cluster: Cluster, ns: str, published: Callable[[int], bool], before_kill: Callable[[], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Run Job ``train`` (backoffLimit 1, a trainer that resumes from its volume); once
    its checkpoint 3 is ``published``, call ``before_kill`` and kill the pod; wait for the
    retry to complete. The first pod's and the retry's trainer events, and the retry's name.
    """
    container = trainer(
        cluster.images.sidecar, trial="t0", checkpoints=6, interval=0.3, resume=True, hold_after=3
    )
    job = training_job("train", opted_in("exp"), container)
    job["spec"]["backoffLimit"] = 1
    cluster.apply(job, ns)
    wait_for(lambda: job_pods(cluster, "train", ns), 60, what="the Job's pod")
    first = job_pods(cluster, "train", ns)[0]["metadata"]["name"]

    def holding() -> bool:
        try:
            events = events_of(cluster, first, ns)
        except Exception:  # the container has not started yet
            return False
        return any(e["event"] == "holding" for e in events)

    wait_for(holding, 180, interval=1, what="the first pod's checkpoint 3")
    wait_for(lambda: published(3), 60, interval=0.5, what="checkpoint 3 published")
    before_kill()
    first_events = events_of(cluster, first, ns)
    cluster.kube.kubectl("delete", "pod", first, "-n", ns, "--wait=false")
    cluster.wait_for("job", "train", ns, "condition=Complete", 300)
    pods = [p["metadata"]["name"] for p in job_pods(cluster, "train", ns)]
    retry = next(p for p in pods if p != first)
    return first_events, events_of(cluster, retry, ns), retry


def checkpoint_files(events: list[dict[str, Any]], name: str) -> dict[str, str]:
    (event,) = [e for e in events if e["event"] == "checkpoint" and e["name"] == name]
    files: dict[str, str] = event["files"]
    return files


def published_by(cluster: Cluster, pod: str, ns: str) -> list[str]:
    records = sidecar_records(cluster, pod, ns)
    return sorted(r["path"] for r in records if r.get("msg") == "checkpoint published")


def test_a_killed_jobs_retry_resumes_from_its_restored_checkpoint(
    cluster: Cluster,
    operator_beside: Operator,
    cluster_s3: ClusterS3,
    cluster_namespace: str,
    pod_figures: Callable[..., None],
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns, restoreOnStart=True)
    prefix = f"results/{TRIAL}"
    before: dict[str, Any] = {}

    def published(index: int) -> bool:
        key = f"{prefix}/checkpoint_{index:06d}/{MANIFEST_NAME}"
        return key in bucket_objects(cluster_s3.server, bucket, prefix)

    def remember() -> None:  # the checkpoints (the trainer appends to progress.csv)
        found = objects_with_times(cluster_s3, bucket, prefix)
        before.update({k: v for k, v in found.items() if "/checkpoint_" in k})

    first, retry_events, retry = kill_after_checkpoint_3_and_retry(cluster, ns, published, remember)

    start = retry_events[0]
    assert start["readyz"] == 200
    # Before its first instruction the trainer finds checkpoint 3, as it was saved, and
    # nothing older: the newest complete checkpoint.
    assert list(start["found"]["t0"]) == ["checkpoint_000003"]
    assert start["found"]["t0"]["checkpoint_000003"] == checkpoint_files(first, "checkpoint_000003")
    written = [e["name"] for e in retry_events if e["event"] == "checkpoint"]
    assert written == ["checkpoint_000004", "checkpoint_000005", "checkpoint_000006"]
    # Each checkpoint is in the bucket once: the restored ones were not sent again.
    after = objects_with_times(cluster_s3, bucket, prefix)
    assert {k: v for k, v in after.items() if k in before} == before
    checkpoints = {key.split("/")[3] for key in after if "/checkpoint_" in key}
    assert checkpoints == {f"checkpoint_{i:06d}" for i in range(1, 7)}
    for index in range(1, 7):
        assert f"{prefix}/checkpoint_{index:06d}/{MANIFEST_NAME}" in after
    assert f"{prefix}/{owner_marker(f'{ns}/job/train')}" in after
    assert published_by(cluster, retry, ns) == [f"{TRIAL}/checkpoint_00000{i}" for i in (4, 5, 6)]
    records = sidecar_records(cluster, retry, ns)
    (finished,) = [r for r in records if r.get("msg") == "restore finished"]
    assert finished["checkpoints"] == [f"{TRIAL}/checkpoint_000003"]
    killed = next(e["time"] for e in first if e["event"] == "holding")
    pod_figures(
        restored=finished["checkpoints"][0],
        restore_s=finished["seconds"],
        restored_bytes=finished["bytes"],
        checkpoint_to_retry_trainer_start_s=round(start["time"] - killed, 1),
    )


def test_a_checkpoint_without_its_manifest_is_passed_over_for_the_one_before(
    cluster: Cluster, operator_beside: Operator, cluster_s3: ClusterS3, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns, restoreOnStart=True)
    prefix = f"results/{TRIAL}"
    manifest = f"{prefix}/checkpoint_000003/{MANIFEST_NAME}"

    def published(index: int) -> bool:
        key = f"{prefix}/checkpoint_{index:06d}/{MANIFEST_NAME}"
        return key in bucket_objects(cluster_s3.server, bucket, prefix)

    def unpublish() -> None:  # as if the pod died before its manifest went up
        client = cluster_s3.server.client()
        try:
            client.delete_object(Bucket=bucket, Key=manifest)
        finally:
            client.close()

    first, retry_events, _ = kill_after_checkpoint_3_and_retry(cluster, ns, published, unpublish)
    start = retry_events[0]
    assert list(start["found"]["t0"]) == ["checkpoint_000002"]
    assert start["found"]["t0"]["checkpoint_000002"] == checkpoint_files(first, "checkpoint_000002")
    written = [e["name"] for e in retry_events if e["event"] == "checkpoint"]
    assert written == [f"checkpoint_00000{i}" for i in (3, 4, 5, 6)]


def test_a_workers_retry_restores_from_the_head_node_service(
    cluster: Cluster, operator_beside: Operator, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    cluster.apply(syncconfig("exp", {**FAST_SPEC, "restoreOnStart": True}), ns)
    cluster.wait_for("syncconfig", "exp", ns, "condition=Ready", 60)
    head = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "head", **opted_in("exp", role="head")},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "driver",
                    "image": cluster.images.sidecar,
                    "command": ["python3", "-c", "import time; time.sleep(3600)"],
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }
    cluster.apply(head, ns)
    cluster.wait_for("pod", "head", ns, "condition=Ready", 120)

    def on_head() -> dict[str, str]:
        return trial_volume_files(cluster, "head", ns, "driver")

    def published(index: int) -> bool:
        return f"{TRIAL}/checkpoint_{index:06d}/{MANIFEST_NAME}" in on_head()

    first, retry_events, retry = kill_after_checkpoint_3_and_retry(
        cluster, ns, published, lambda: None
    )
    start = retry_events[0]
    assert start["readyz"] == 200
    assert list(start["found"]["t0"]) == ["checkpoint_000003"]
    assert start["found"]["t0"]["checkpoint_000003"] == checkpoint_files(first, "checkpoint_000003")
    assert published_by(cluster, retry, ns) == [f"{TRIAL}/checkpoint_00000{i}" for i in (4, 5, 6)]
    files = on_head()
    for index in range(1, 7):
        assert f"{TRIAL}/checkpoint_{index:06d}/{MANIFEST_NAME}" in files


MIB = 2**20


def large_checkpoint(trial_dir: pathlib.Path, files: int, mib_each: int) -> dict[str, str]:
    """``checkpoint_000001`` of ``files`` files of ``mib_each`` MiB in ``trial_dir``, each
    different; its files' sha256 by path relative to ``trial_dir`` (as the trainer lists)."""
    checkpoint = trial_dir / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    block = os.urandom(8 * MIB)
    digests = {}
    for k in range(files):
        digest = hashlib.sha256()
        with open(checkpoint / f"model_{k}.pt", "wb") as out:
            for i in range(mib_each // 8):
                piece = block[k + i :] + block[: k + i]
                out.write(piece)
                digest.update(piece)
        digests[f"checkpoint_000001/model_{k}.pt"] = digest.hexdigest()
    return digests


def test_a_pod_restoring_1_gib_starts_its_trainer_with_the_checkpoint_whole(
    cluster: Cluster,
    operator_beside: Operator,
    cluster_s3: ClusterS3,
    cluster_namespace: str,
    pod_figures: Callable[..., None],
    tmp_path: pathlib.Path,
) -> None:
    ns = cluster_namespace
    bucket = apply_s3_syncconfig(cluster, cluster_s3, ns, restoreOnStart=True)
    # Published as a sidecar publishes it (manifest last), from this machine.
    volume = tmp_path / "volume"
    expected = large_checkpoint(volume / TRIAL, files=4, mib_each=256)
    server = cluster_s3.server
    env = {**server.env(), "TRIALSYNC_STORAGE_OPTIONS": json.dumps(server.sidecar_options())}
    code, out = run_once(
        ["--root", str(volume), "--upload-dir", f"s3://{bucket}/results"], env, timeout=600
    )
    shutil.rmtree(volume)  # a GiB not to keep among the test's files
    assert code == 0, out
    metadata = opted_in("exp")
    metadata["annotations"][names.RESTORE_PREFIX_ANNOTATION] = TRIAL
    container = trainer(cluster.images.sidecar, trial="t0", checkpoints=1, resume=True)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "restored", **metadata},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
        },
    }
    created = time.time()
    cluster.apply(pod, ns)
    done = cluster.poll_pod(
        "restored", ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "done", 300
    )
    ended = {
        c["name"]: c["state"].get("terminated")
        for c in done["status"].get("initContainerStatuses", [])
        + done["status"].get("containerStatuses", [])
    }
    assert done["status"]["phase"] == "Succeeded", ended
    start = events_of(cluster, "restored", ns)[0]
    # Before its first instruction the trainer finds the whole GiB, byte for byte.
    assert start["readyz"] == 200
    assert start["found"]["t0"] == {"checkpoint_000001": expected}
    (finished,) = [
        r for r in sidecar_records(cluster, "restored", ns) if r.get("msg") == "restore finished"
    ]
    assert finished["checkpoints"] == [f"{TRIAL}/checkpoint_000001"]
    assert finished["bytes"] == 1024 * MIB
    pod_figures(
        restored_mib=round(finished["bytes"] / MIB),
        restore_s=finished["seconds"],
        created_to_trainer_start_s=round(start["started"] - created, 2),
    )


def objects_with_times(s3: ClusterS3, bucket: str, prefix: str) -> dict[str, tuple[str, str]]:
    """key -> (ETag, LastModified) of every object under ``prefix``: an object uploaded
    again has a new LastModified."""
    client = s3.server.client()
    try:
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = (item["ETag"], item["LastModified"].isoformat())
        return found
    finally:
        client.close()
