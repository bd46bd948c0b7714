"""The pod spec the injection webhook will produce, written by hand.

``inject(pod, sidecar)`` is what a pod looks like once trialsync's sidecar is added, per
the injection contract in DESIGN.md. The cluster tests run pods built with it, so the
operator's webhook can later be checked against it: same container, same volumes, same
security context, same probes.

- The sidecar is an init container with ``restartPolicy: Always`` (a native sidecar),
  appended after the pod's own init containers; ``containers`` keep their order.
- Its startup probe is ``GET /readyz`` (200 once the ledger is recovered and the first sync
  is done), so the trainer starts only when its checkpoints can be saved.
- The trial volume (an emptyDir unless the pod names one) is mounted at the same path in
  every container, read-only in the sidecar unless it is a head receiving workers' trial
  dirs; the sidecar also gets a private emptyDir on /tmp (TMPDIR and HOME).
- Explicit requests and limits; a read-only root filesystem, no privilege escalation, not
  privileged, no capabilities, RuntimeDefault seccomp, non-root: the user of the pod (or
  of its first container) when set, so the sidecar can read the trainer's files, else
  65532.

The operator's injector (``trialsync_operator.admission.injection``) makes the same choices; its
golden files are the reference for the exact output, this module for what runs on a node.
- Credentials are references (``secretKeyRef``), never values.
- ``trialsync.io/status`` records what was injected.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIDECAR_NAME = "trialsync-sidecar"
HTTP_PORT = 9746
HEAD_PORT = 9747
TRIAL_VOLUME = "trialsync-trial"
TMP_VOLUME = "trialsync-tmp"
STATUS_ANNOTATION = "trialsync.io/status"
#: The image's user when the pod sets none.
DEFAULT_UID = 65532

Manifest = dict[str, Any]


@dataclass(frozen=True)
class SidecarSpec:
    """What the webhook takes from the SyncConfig and the pod's annotations."""

    image: str
    #: Where the trial volume is mounted in every container (TRIALSYNC_ROOT).
    mount_path: str = "/trial"
    role: str = "worker"
    #: TRIALSYNC_* settings (and other plain variables), by name.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Variables read from Secrets: name -> (secret name, key).
    secret_env: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: An existing volume of the pod to use as the trial volume instead of an emptyDir.
    volume: str | None = None
    requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "128Mi"})
    limits: Mapping[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})
    #: The SyncConfig it came from, recorded in the status annotation.
    config_name: str = "hand-written"


def _user(pod_spec: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The uid and gid the trainer runs as: the pod's, else its first container's."""
    pod = pod_spec.get("securityContext") or {}
    containers = pod_spec.get("containers") or [{}]
    main = containers[0].get("securityContext") or {}
    uid = pod.get("runAsUser", main.get("runAsUser"))
    gid = pod.get("runAsGroup", main.get("runAsGroup"))
    return uid, gid


def receives(sidecar: SidecarSpec) -> bool:
    """A head with no upload dir receives workers' trial dirs: its trial mount is writable."""
    return sidecar.role == "head" and "TRIALSYNC_UPLOAD_DIR" not in sidecar.env


def sidecar_container(sidecar: SidecarSpec, pod_spec: Mapping[str, Any]) -> Manifest:
    """The sidecar container for a pod whose spec (before injection) is ``pod_spec``."""
    env: list[Manifest] = [
        {"name": "TRIALSYNC_ROOT", "value": sidecar.mount_path},
        {"name": "TRIALSYNC_ROLE", "value": sidecar.role},
        {"name": "TRIALSYNC_HTTP_ADDR", "value": f"0.0.0.0:{HTTP_PORT}"},
        # The root filesystem is read-only: anything a library writes goes to /tmp.
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HOME", "value": "/tmp"},
    ]
    env += [{"name": k, "value": v} for k, v in sidecar.env.items()]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for k, (secret, key) in sidecar.secret_env.items()
    ]
    uid, gid = _user(pod_spec)
    uid = DEFAULT_UID if uid is None else uid
    security: Manifest = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        # The trainer's user (it must read what the trainer writes), explicit so that
        # runAsNonRoot never depends on the image.
        "runAsUser": uid,
        "runAsGroup": uid if gid is None else gid,
    }
    if uid != 0:
        security["runAsNonRoot"] = True
    trial_mount: Manifest = {
        "name": sidecar.volume or TRIAL_VOLUME,
        "mountPath": sidecar.mount_path,
    }
    if not receives(sidecar):
        trial_mount["readOnly"] = True
    ports = [{"name": "trialsync-http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if sidecar.role == "head":
        ports.append({"name": "trialsync-head", "containerPort": HEAD_PORT, "protocol": "TCP"})
    return {
        "name": SIDECAR_NAME,
        "image": sidecar.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["sync"],
        "restartPolicy": "Always",
        "env": env,
        "ports": ports,
        "resources": {"requests": dict(sidecar.requests), "limits": dict(sidecar.limits)},
        "securityContext": security,
        # Checked every second for up to 5 minutes: the first sync may have a lot to list.
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": HTTP_PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": 300,
        },
        # /healthz stays 200 through the final sync, so the kubelet never kills it then.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": HTTP_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "volumeMounts": [trial_mount, {"name": TMP_VOLUME, "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def inject(pod: Manifest, sidecar: SidecarSpec) -> Manifest:
    """``pod`` (a Pod manifest, or a pod template with ``metadata`` and ``spec``) with the
    sidecar injected; the input is not modified."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    metadata = pod.setdefault("metadata", {})
    volume_name = sidecar.volume or TRIAL_VOLUME
    volumes = spec.setdefault("volumes", [])
    if sidecar.volume is None:
        volumes.append({"name": TRIAL_VOLUME, "emptyDir": {}})
    volumes.append({"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        mounts = container.setdefault("volumeMounts", [])
        if not any(m["name"] == volume_name for m in mounts):
            mounts.append({"name": volume_name, "mountPath": sidecar.mount_path})
    container = sidecar_container(sidecar, spec)
    spec.setdefault("initContainers", []).append(container)
    metadata.setdefault("annotations", {})[STATUS_ANNOTATION] = json.dumps(
        {
            "container": SIDECAR_NAME,
            "volumes": [v for v in (None if sidecar.volume else TRIAL_VOLUME, TMP_VOLUME) if v],
            "config": sidecar.config_name,
        },
        sort_keys=True,
    )
    return pod
