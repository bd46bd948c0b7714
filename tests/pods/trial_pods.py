"""Pods of simulated Ray trials with the sidecar injected, and how to read what they did.

Tests that run no operator build their pods with the operator's own injection
(``trialsync_operator.admission.injection``), from a SyncConfig spec: a pod here is what
the webhook would make of it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from localcluster.cluster_s3 import ClusterS3
from localcluster.harness import Cluster, Manifest, workload
from localcluster.object_stores import S3Server
from tests.support.pods import apply, syncconfig
from trialsync import contract
from trialsync_operator import names
from trialsync_operator.admission import injection
from trialsync_operator.reconcile import reconciler
from trialsync_operator.settings import Defaults
from trialsync_operator.syncconfig import ConfigView, SidecarImage, view_of

SIDECAR_NAME = names.SIDECAR_NAME

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
#: SyncConfig settings that keep the tests quick: a short settle window, and a final sync
#: bounded well inside the pods' grace period.
FAST_SPEC = {"checkpointSettleSeconds": 1, "finalSyncTimeoutSeconds": 20}
#: Sidecar settings no SyncConfig holds, added to the injected sidecar: a short retry
#: backoff, so a store that comes up late is retried within seconds.
TEST_ONLY_ENV = {"TRIALSYNC_MAX_BACKOFF": "2"}


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
    root: str = TRIAL_ROOT,
    resume: bool = False,
    hold_after: int = 0,
) -> Manifest:
    """A container running the simulated trainer (``localcluster/trainer.py``):
    ``checkpoints`` checkpoints of ``trial`` under ``root`` (Ray's storage_path: the trial
    volume), ``interval`` seconds apart; ``trigger`` announces each to the sidecar,
    ``then`` is ``exit`` or ``sleep`` (until SIGTERM); ``keep`` deletes all but the newest
    ``keep`` checkpoints after each one (Ray's num_to_keep); ``resume`` goes on after the
    newest checkpoint in the volume; ``hold_after`` waits after that checkpoint (unless it
    resumed) until SIGTERM, and then fails (exit 143), as a trainer killed mid-training
    does."""
    args = [
        f"--root={root}",
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
    if resume:
        args.append("--resume")
    if hold_after:
        args.append(f"--hold-after={hold_after}")
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


def s3_spec(s3: ClusterS3, endpoint_url: str, upload_dir: str, **spec: Any) -> dict[str, Any]:
    """A SyncConfig spec syncing to ``upload_dir`` on the test's SeaweedFS, reached at
    ``endpoint_url`` with the credentials Secret ``s3.install`` made; ``spec`` over that."""
    return {
        "uploadDir": upload_dir,
        "storage": {
            "endpoint": endpoint_url,
            "region": s3.server.region,
            "addressingStyle": "path",
        },
        "credentials": {"secretRef": {"name": ClusterS3.CREDENTIALS_SECRET}},
        **FAST_SPEC,
        **spec,
    }


def syncconfig_view(cluster: Cluster, namespace: str, spec: Mapping[str, Any]) -> ConfigView:
    """SyncConfig ``exp`` of ``spec`` in ``namespace``, read as the operator reads it (with
    the defaults the apiserver would fill in)."""
    body = syncconfig("exp", {**_crd_defaults(), **spec})
    body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1)
    image = SidecarImage(cluster.images.sidecar, frozenset(contract.IMAGE_SCHEMES))
    view = view_of(body, image)
    assert view.valid, view.message
    return view


def _crd_defaults() -> dict[str, Any]:
    return {
        field: setting.default
        for field, setting in contract.BY_CRD_FIELD.items()
        if setting.default not in (None, ())
    }


def injected_pod(
    cluster: Cluster,
    view: ConfigView,
    name: str,
    containers: Iterable[Manifest],
    *,
    role: str = "worker",
    init_containers: Iterable[Manifest] = (),
    labels: Mapping[str, str] | None = None,
    grace_seconds: int = 30,
    pod_security: Mapping[str, Any] | None = None,
) -> Manifest:
    """A Pod (restartPolicy Never) running ``containers`` that opts in to SyncConfig
    ``view`` as ``role``, with the sidecar injected as the operator's webhook injects it."""
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **opted_in(view.name, role)},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace_seconds,
            "securityContext": dict(pod_security or {}),
            "initContainers": list(init_containers),
            "containers": list(containers),
        },
    }
    pod["metadata"]["labels"].update(labels or {})
    return inject(cluster, view, pod)


def inject(cluster: Cluster, view: ConfigView, pod: Manifest) -> Manifest:
    """``pod`` as the operator's webhook admits it with SyncConfig ``view``, plus
    ``TEST_ONLY_ENV`` in its sidecar, less the opt-in label."""
    defaults = Defaults(image=cluster.images.sidecar)
    result = injection.plan(pod, view.namespace, lambda ns, n: view, defaults)
    assert result.patch is not None, result.warnings
    out = apply(pod, result.patch)
    (sidecar,) = [c for c in out["spec"]["initContainers"] if c["name"] == SIDECAR_NAME]
    sidecar["env"] = [*sidecar["env"], *({"name": k, "value": v} for k, v in TEST_ONLY_ENV.items())]
    # Created injected already: no webhook of an operator another test installed sees it.
    del out["metadata"]["labels"][names.INJECT_LABEL]
    return out


def head_objects(cluster: Cluster, view: ConfigView) -> None:
    """The head-node token Secret and Service the operator makes for a SyncConfig without
    an upload dir (seed scenario 3), made here for a test that runs no operator."""
    for body in (
        reconciler.head_secret(view, secrets.token_urlsafe(24)),
        reconciler.head_service(view),
    ):
        # No SyncConfig object owns them here: the garbage collector would remove them.
        del body["metadata"]["ownerReferences"]
        cluster.apply(body, view.namespace)


def log_time(stamp: str) -> float:
    """Seconds since the epoch of a sidecar log record's time, ``2026-01-01T00:00:00.000Z``
    (the node's clock, which the trainer's event times and the test share)."""
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.UTC).timestamp()


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


@contextlib.contextmanager
def bucket_listings(
    server: S3Server, bucket: str, prefix: str, period: float = 0.2
) -> Iterator[list[set[str]]]:
    """The keys under ``prefix`` in ``bucket``, listed every ``period`` seconds in a thread
    while the block runs (and once more after it): one set per listing."""
    listings: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:
        client = server.client()
        try:
            while True:
                pages = client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                )
                listings.append({o["Key"] for page in pages for o in page.get("Contents", [])})
                if stop.wait(period):
                    break
        finally:
            client.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield listings
    finally:
        stop.set()
        thread.join(timeout=30)


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
