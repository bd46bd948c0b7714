"""Pods of simulated Ray trials with the sidecar injected, and how to read what they did."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster, Manifest, workload
from localcluster.object_stores import S3Server
from tests.support.pods import syncconfig
from tests.support.sidecar_pod import SIDECAR_NAME, SidecarSpec, inject
from trialsync_operator import names

MANIFEST_NAME = ".trialsync-manifest.json"
TRIAL_ROOT = "/trial"
#: The restricted Pod Security profile for the trainer too: the sidecar must not be the
#: only container that could run under it.
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
    "runAsNonRoot": True,
}
#: Settings that keep the tests quick: short settle window and retry backoff, and a final
#: sync bounded well inside the pods' grace period.
FAST_SIDECAR_ENV = {
    "TRIALSYNC_CHECKPOINT_SETTLE": "1",
    "TRIALSYNC_MAX_BACKOFF": "2",
    "TRIALSYNC_FINAL_SYNC_TIMEOUT": "20",
    "TRIALSYNC_UPLOAD_MEMORY": str(64 * 2**20),
    "TRIALSYNC_LOG_LEVEL": "info",
}


def trainer(
    image: str,
    *,
    trial: str,
    experiment: str = "exp",
    checkpoints: int = 3,
    size: int = 256 * 1024,
    interval: float = 0.5,
    trigger: bool = False,
    then: str = "exit",
    name: str = "trainer",
    keep: int = 0,
) -> Manifest:
    """A container running ``tests/pods/workloads/trainer.py``: ``checkpoints`` checkpoints
    of ``trial`` under the trial volume, ``interval`` seconds apart; ``trigger`` announces
    each to the sidecar, ``then`` is ``exit`` or ``sleep`` (until SIGTERM); ``keep`` deletes
    all but the newest ``keep`` checkpoints after each one (Ray's num_to_keep)."""
    args = [
        f"--root={TRIAL_ROOT}",
        f"--experiment={experiment}",
        f"--trial={trial}",
        f"--checkpoints={checkpoints}",
        f"--size={size}",
        f"--interval={interval}",
        f"--then={then}",
        f"--keep={keep}",
    ]
    if trigger:
        args.append("--trigger")
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", workload("trainer")],
        "args": args,
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": RESTRICTED,
    }


def s3_sidecar(
    cluster: Cluster,
    s3: ClusterS3,
    endpoint_url: str,
    upload_dir: str,
    env: Mapping[str, str] | None = None,
) -> SidecarSpec:
    """The sidecar of a worker syncing to ``upload_dir`` on the test's SeaweedFS."""
    return SidecarSpec(
        image=cluster.images.sidecar,
        mount_path=TRIAL_ROOT,
        env={
            **FAST_SIDECAR_ENV,
            "TRIALSYNC_UPLOAD_DIR": upload_dir,
            "TRIALSYNC_STORAGE_OPTIONS": s3.storage_options(endpoint_url),
            **(env or {}),
        },
        secret_env=s3.credentials(),
    )


def trial_pod(
    name: str,
    sidecar: SidecarSpec,
    containers: Iterable[Manifest],
    *,
    init_containers: Iterable[Manifest] = (),
    labels: Mapping[str, str] | None = None,
    grace_seconds: int = 30,
    pod_security: Mapping[str, Any] | None = None,
) -> Manifest:
    """A Pod (restartPolicy Never) running ``containers``, with the sidecar injected."""
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace_seconds,
            "securityContext": dict(pod_security or {}),
            "initContainers": list(init_containers),
            "containers": list(containers),
        },
    }
    return inject(pod, sidecar)


def trainer_events(logs: str) -> list[dict[str, Any]]:
    """The trainer's JSON event lines (anything else in the log is ignored)."""
    events = []
    for line in logs.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def sidecar_records(cluster: Cluster, pod: str, namespace: str) -> list[dict[str, Any]]:
    """The sidecar's JSON log records, read with ``kubectl logs``."""
    records = []
    for line in cluster.logs(pod, namespace, SIDECAR_NAME).splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def written_files(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """checkpoint-relative path -> sha256 of every checkpoint file the trainer wrote."""
    files: dict[str, str] = {}
    for event in events:
        if event["event"] == "checkpoint":
            files.update(event["files"])
    return files


def bucket_objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` in ``bucket``: key -> content."""
    client = server.client()
    try:
        objects: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
                objects[item["Key"]] = body.read()
        return objects
    finally:
        client.close()


def apply_s3_syncconfig(cluster: Cluster, s3: ClusterS3, namespace: str, **spec: Any) -> str:
    """SyncConfig ``exp`` syncing to a new bucket on the test's SeaweedFS (its Service and
    credentials installed in ``namespace``), quick to settle, with ``spec`` over that;
    returns the bucket once the operator says the SyncConfig is Ready."""
    endpoint = s3.install(cluster, namespace)
    bucket = s3.server.make_bucket()
    base = {
        "uploadDir": f"s3://{bucket}/results",
        "storage": {"endpoint": endpoint, "region": s3.server.region, "addressingStyle": "path"},
        "credentials": {"secretRef": {"name": ClusterS3.CREDENTIALS_SECRET}},
        "checkpointSettleSeconds": 1,
        "finalSyncTimeoutSeconds": 20,
    }
    cluster.apply(syncconfig("exp", {**base, **spec}), namespace)
    cluster.wait_for("syncconfig", "exp", namespace, "condition=Ready", 60)
    return bucket


def job_pod(cluster: Cluster, job: str, namespace: str) -> Manifest:
    """The one pod of Job ``job``."""
    listing = cluster.kube.kubectl(
        "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json"
    ).stdout
    [pod] = json.loads(listing)["items"]
    return dict(pod)


def opted_in(config: str, role: str = "worker") -> dict[str, Any]:
    """Pod metadata that opts in to injection with SyncConfig ``config``, mounting the
    trial volume at ``TRIAL_ROOT``."""
    return {
        "labels": {names.INJECT_LABEL: "true"},
        "annotations": {
            names.CONFIG_ANNOTATION: config,
            names.MOUNT_PATH_ANNOTATION: TRIAL_ROOT,
            names.ROLE_ANNOTATION: role,
        },
    }


def training_job(name: str, pod_metadata: Mapping[str, Any], container: Manifest) -> Manifest:
    """A Job of one pod (no retries) running ``container``, its template's metadata given."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": dict(pod_metadata),
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                },
            },
        },
    }


#: Lists the trial volume: relative path -> sha256 (run in a container of the pod).
LIST_TRIAL_VOLUME = f"""
import hashlib, json, os
out = {{}}
for d, _, files in os.walk({TRIAL_ROOT!r}):
    for f in files:
        p = os.path.join(d, f)
        out[os.path.relpath(p, {TRIAL_ROOT!r})] = hashlib.sha256(open(p, "rb").read()).hexdigest()
print(json.dumps(out))
"""


def trial_volume_files(
    cluster: Cluster, pod: str, namespace: str, container: str
) -> dict[str, str]:
    """relative path -> sha256 of every file on ``pod``'s trial volume, read in ``container``."""
    out = cluster.kube.kubectl(
        "exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", LIST_TRIAL_VOLUME
    ).stdout
    files: dict[str, str] = json.loads(out)
    return files
