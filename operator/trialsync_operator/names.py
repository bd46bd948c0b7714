"""The names trialsync writes into the cluster: API group, labels, annotations, objects.

One place, so the CRD, the webhook, the reconciler, the chart and the docs agree.
"""

from __future__ import annotations

import hashlib
import re

from trialsync import contract

GROUP = "trialsync.io"
VERSION = "v1alpha1"
PLURAL = "syncconfigs"
KIND = "SyncConfig"
API_VERSION = f"{GROUP}/{VERSION}"

#: The opt-in label; the webhook's objectSelector matches it, so no other pod reaches us.
INJECT_LABEL = f"{GROUP}/inject"
#: Annotations a pod sets.
CONFIG_ANNOTATION = f"{GROUP}/config"
ROLE_ANNOTATION = f"{GROUP}/role"
VOLUME_ANNOTATION = f"{GROUP}/volume"
MOUNT_PATH_ANNOTATION = f"{GROUP}/mount-path"
#: Ray's storage_path, where it is below the trial volume's mount: the sidecar's root.
STORAGE_PATH_ANNOTATION = f"{GROUP}/storage-path"
#: Restore on start: "true" or "false" over the SyncConfig's restoreOnStart; the owner
#: key a pod's replacement shares, or the prefix of the upload dir the pod owns.
RESTORE_ANNOTATION = f"{GROUP}/restore"
RESTORE_KEY_ANNOTATION = f"{GROUP}/restore-key"
RESTORE_PREFIX_ANNOTATION = f"{GROUP}/restore-prefix"
#: Per-pod overrides of the sidecar, over its SyncConfig's spec.sidecar and the operator's
#: defaults: its requests and limits, keyed by ("requests" or "limits", resource), and the
#: uid and gid it runs as.
SIDECAR_RESOURCE_ANNOTATIONS: dict[tuple[str, str], str] = {
    (part, resource): f"{GROUP}/sidecar-{resource}-{word}"
    for part, word in (("requests", "request"), ("limits", "limit"))
    for resource in ("cpu", "memory", "ephemeral-storage")
}
SIDECAR_UID_ANNOTATION = f"{GROUP}/sidecar-uid"
SIDECAR_GID_ANNOTATION = f"{GROUP}/sidecar-gid"
#: Written by the webhook: what was injected (JSON).
STATUS_ANNOTATION = f"{GROUP}/status"
#: Labels the webhook adds, so a Service can select a SyncConfig's head pod.
CONFIG_LABEL = f"{GROUP}/config"
ROLE_LABEL = f"{GROUP}/role"
#: Labels on the objects the operator creates.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "trialsync-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"

SIDECAR_NAME = "trialsync-sidecar"
TRIAL_VOLUME = "trialsync-trial"
SCRATCH_VOLUME = "trialsync-tmp"
CREDENTIALS_VOLUME = "trialsync-credentials"
HEAD_TOKEN_KEY = "token"
#: The type of the Secrets the operator creates (the only type it may create).
HEAD_SECRET_TYPE = f"{GROUP}/head-node"

_NOT_DNS_LABEL = re.compile(r"[^a-z0-9-]")


def dns_label(prefix: str, name: str) -> str:
    """``prefix-name`` as an RFC 1035 label (a Service name): at most 63 characters,
    lowercase letters, digits and '-', starting with a letter; a long or unusual name is
    shortened with a hash, so distinct names stay distinct."""
    base = f"{prefix}-{_NOT_DNS_LABEL.sub('-', name.lower())}"
    if len(base) <= 63 and base == f"{prefix}-{name}":
        return base
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{base[: 63 - 9].rstrip('-')}-{digest}"


def head_service_name(config_name: str) -> str:
    """The Service in front of a SyncConfig's head pod (seed scenario 3)."""
    return dns_label("trialsync-head", config_name)


def head_secret_name(config_name: str, config_uid: str) -> str:
    """The Secret holding the head-node service's token (seed scenario 3).

    Named for this incarnation of the SyncConfig (its uid): one deleted and created again
    under the same name gets a Secret of its own at once, while the garbage collector
    removes its predecessor's, so pods never reference a Secret about to go."""
    return dns_label("trialsync-head", f"{config_name}-{config_uid[:8]}")


def head_url(config_name: str, namespace: str) -> str:
    return f"http://{head_service_name(config_name)}.{namespace}.svc:{contract.HEAD_PORT}"
