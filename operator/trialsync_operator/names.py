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
#: The mutating webhook's name in its configuration (the chart's webhooks.yaml).
POD_WEBHOOK = f"pods.{GROUP}"
#: The reason of the Event the operator records on a pod that missed its injection.
MISSED_INJECTION_REASON = "MissedInjection"
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
#: The sidecar's upload rate limit, a quantity of bytes per second, over the SyncConfig's
#: bandwidthLimit ("0": none).
BANDWIDTH_LIMIT_ANNOTATION = f"{GROUP}/bandwidth-limit"
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
#: The head-node Secret in the sidecar (its files at contract.HEAD_SECRET_MOUNT).
HEAD_SECRET_VOLUME = "trialsync-head"
#: The head-node Secret's type: the operator creates Secrets of its own types only.
HEAD_SECRET_TYPE = f"{GROUP}/head-node"
#: The head-node Secret's keys: the token every sidecar of the SyncConfig holds, the head's
#: serving certificate and key (the head's sidecar alone), and the CA certificate that
#: signed it (what workers trust).
HEAD_TOKEN_KEY = "token"
HEAD_CERT_KEY = "tls.crt"
HEAD_KEY_KEY = "tls.key"
HEAD_CA_KEY = "ca.crt"

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
    """The Secret holding the head-node service's token and TLS identity (seed scenario 3).

    Named for this incarnation of the SyncConfig (its uid): one deleted and created again
    under the same name gets a Secret of its own at once, while the garbage collector
    removes its predecessor's, so pods never reference a Secret about to go. The ``-tls``
    ending (earlier versions made ``trialsync-head-<name>-<uid>`` with a token alone) keeps
    a Secret of the old format from being taken for one with certificates."""
    return dns_label("trialsync-head", f"{config_name}-{config_uid[:8]}-tls")


def head_hosts(config_name: str, namespace: str) -> list[str]:
    """The DNS names of a SyncConfig's head Service, as its certificate names them."""
    service = head_service_name(config_name)
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def head_url(config_name: str, namespace: str) -> str:
    """Where a worker reaches the head: always HTTPS, checked against the head's CA."""
    return f"https://{head_service_name(config_name)}.{namespace}.svc:{contract.HEAD_PORT}"
