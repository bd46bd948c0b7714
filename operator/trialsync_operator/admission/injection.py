"""The pod mutation: a pure function of (pod, SyncConfig, defaults) to what the pod becomes.

Kept apart from the webhook plumbing so it is tested without a server (golden files in
``tests/unit/golden/``). The contract (docs/architecture.md, "The injection"):

- the sidecar is a native sidecar: an init container with ``restartPolicy: Always``,
  appended after the pod's own init containers; ``containers`` keep their order;
- the trial volume is an existing volume of the pod (``trialsync.io/volume``) or an
  emptyDir mounted at ``trialsync.io/mount-path`` in every container;
- explicit requests and limits, a restrictive securityContext, and the pod's runAsUser
  and runAsGroup where set (so the sidecar can read what the trainer writes); where the
  pod sets none (Ray's images run as uid 1000 without saying so), the sidecar runs as
  65532 and makes what it writes in the trial volume writable by every user
  (``share_files``), so the trainer can still change and delete it;
- per-pod overrides of the sidecar's resources and user (``read_overrides``); a pod
  whose containers are all Guaranteed stays Guaranteed (``pod_qos``, Kubernetes' rule);
- the sidecar's mounts fit together: a mount path at or around one of them is refused;
- credentials are referenced (Secret volumes), never copied; the credentials Secret is a
  volume only, never ``envFrom``, so the sidecar reads a rotated Secret when the kubelet
  updates the volume (an environment is fixed at start); of the head-node Secret, the
  head's sidecar mounts the token and its certificate and key, a worker's the token and
  the CA certificate alone, never the key;
- idempotent: a pod that already has the sidecar is left alone, and the status
  annotation records what was injected and from which SyncConfig generation.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from trialsync import contract
from trialsync.contract import Duty, Mode, Role, SettingError
from trialsync_operator import names, quantity
from trialsync_operator.admission import ownership
from trialsync_operator.settings import Defaults
from trialsync_operator.syncconfig import ConfigView

JsonDict = dict[str, Any]
Lookup = Callable[[str, str], ConfigView | None]

STATUS_VERSION = 1
#: The kubelet's default when a pod sets no terminationGracePeriodSeconds.
DEFAULT_GRACE = 30
#: Seconds the startup probe waits for the ledger's recovery and the store's first answer
#: (plus restoreTimeoutSeconds with a restore).
STARTUP_SECONDS = 300
#: Upload buffers take at most this share of the sidecar's memory limit.
UPLOAD_MEMORY_SHARE = Decimal("0.5")
UPLOAD_MEMORY_MAX = contract.UPLOAD_MEMORY.default
UPLOAD_MEMORY_MIN = 16 * 2**20
NON_ROOT_UID = 65532
#: The largest uid or gid the apiserver accepts.
MAX_ID = 2**31 - 1
_ID = re.compile(r"[0-9]{1,10}")
#: Kubernetes' QoS classes (status.qosClass), and the resources that decide them.
GUARANTEED, BURSTABLE, BEST_EFFORT = "Guaranteed", "Burstable", "BestEffort"
QOS_RESOURCES = ("cpu", "memory")
#: A SyncConfig name that is also a label value (the webhook labels the pod with it).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
#: Environment variables an IRSA-style webhook adds for workload identity on AWS.
_WEB_IDENTITY_ENV = (
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


#: Why a pod gets no sidecar, as the metrics count it (``trialsync_injection_skip_total``
#: and ``trialsync_injection_failure_total``): a Refusal's ``reason``, or a skip's.
REASON_ALREADY_INJECTED = "already_injected"
REASON_SYNCING_DISABLED = "syncing_disabled"
REASON_CONFIG_MISSING = "syncconfig_missing"
REASON_CONFIG_INVALID = "syncconfig_invalid"
#: The pod's trialsync.io/* annotations are missing, malformed or conflicting.
REASON_INVALID_ANNOTATIONS = "invalid_annotations"
#: The pod's spec cannot take the sidecar (a volume or mount path clash).
REASON_INVALID_POD = "invalid_pod"


class Refusal(Exception):
    """The pod must not be admitted as it is; the message says which setting and why,
    ``reason`` (a ``REASON_*``) says which kind of problem it is."""

    def __init__(self, message: str, reason: str = REASON_INVALID_POD) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class Result:
    """The outcome for one pod. ``patch`` is None when the pod is admitted unmodified;
    otherwise it holds the new values of the fields that change (labels, annotations,
    initContainers, containers, volumes)."""

    patch: JsonDict | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    config: ConfigView | None = None
    #: Why no sidecar was injected (a ``REASON_*``) when ``patch`` is None.
    skipped: str = ""


@dataclasses.dataclass(frozen=True)
class PodRequest:
    """What a pod asks for in its annotations."""

    config: str
    role: Role
    volume: str | None
    mount_path: str | None
    #: Where in the trainer's view of the volume the data is (Ray's storage_path); None:
    #: the mount itself.
    storage_path: str | None = None
    #: Restore on start, as the pod's annotation says (None: as its SyncConfig says).
    restore: bool | None = None
    #: The prefix of the upload dir whose trials the pod restores (annotation), if any.
    restore_prefix: str | None = None


@dataclasses.dataclass(frozen=True)
class SidecarOverrides:
    """What a pod's annotations set of its sidecar, over the SyncConfig's spec.sidecar and
    the operator's defaults: requests and limits, and the uid and gid it runs as."""

    requests: Mapping[str, str] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    #: Bytes per second (annotation trialsync.io/bandwidth-limit; 0: no limit), over the
    #: SyncConfig's bandwidthLimit; None: as the SyncConfig says.
    bandwidth_limit: int | None = None


def config_name(pod: Mapping[str, Any]) -> str:
    """The SyncConfig the pod names; Refusal when the annotation is missing or no name."""
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    config = _annotation(annotations, names.CONFIG_ANNOTATION)
    if not config:
        raise Refusal(
            f"the pod opts in with {names.INJECT_LABEL}=true but has no "
            f"{names.CONFIG_ANNOTATION} annotation: set it to the name of a SyncConfig in "
            "the pod's namespace"
        )
    if not _NAME.fullmatch(config):
        raise Refusal(
            f"annotation {names.CONFIG_ANNOTATION}={config!r:.100} is not a SyncConfig name "
            "(lowercase letters, digits, '-' and '.', at most 63 characters)"
        )
    return config


def read_request(pod: Mapping[str, Any]) -> PodRequest:
    """The pod's annotations, checked; Refusal saying which annotation is wrong."""
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    config = config_name(pod)
    role = _annotation(annotations, names.ROLE_ANNOTATION, default=contract.ROLE.default)
    if role not in contract.ROLE.choices:
        raise Refusal(f"annotation {names.ROLE_ANNOTATION}={role!r:.100} must be worker or head")
    volume = _annotation(annotations, names.VOLUME_ANNOTATION) or None
    mount_path = _annotation(annotations, names.MOUNT_PATH_ANNOTATION) or None
    if volume and mount_path:
        raise Refusal(
            f"annotations {names.VOLUME_ANNOTATION} and {names.MOUNT_PATH_ANNOTATION} "
            "conflict: name an existing volume holding the trial data, or a path to mount "
            "a new emptyDir at in every container, not both"
        )
    if not volume and not mount_path:
        raise Refusal(
            f"say where the trial data lives: annotation {names.VOLUME_ANNOTATION}=<a "
            f"volume of the pod> or {names.MOUNT_PATH_ANNOTATION}=<an absolute path, e.g. "
            "/root/ray_results>"
        )
    if mount_path is not None:
        normal = posixpath.normpath(mount_path)
        if not mount_path.startswith("/") or normal == "/" or ":" in mount_path:
            raise Refusal(
                f"annotation {names.MOUNT_PATH_ANNOTATION}={mount_path!r:.200} must be an "
                "absolute path other than / (and without ':')"
            )
        mount_path = normal
    storage_path = _annotation(annotations, names.STORAGE_PATH_ANNOTATION) or None
    if storage_path is not None:
        normal = posixpath.normpath(storage_path)
        if not storage_path.startswith("/") or ":" in storage_path:
            raise Refusal(
                f"annotation {names.STORAGE_PATH_ANNOTATION}={storage_path!r:.200} must be an "
                "absolute path (without ':'): Ray's storage_path, on the trial volume"
            )
        storage_path = normal
    restore = _annotation(annotations, names.RESTORE_ANNOTATION)
    if restore not in ("", "true", "false"):
        raise Refusal(
            f'annotation {names.RESTORE_ANNOTATION}={restore!r:.100} must be "true" or '
            '"false" (over the SyncConfig\'s restoreOnStart)'
        )
    prefix = _annotation(annotations, names.RESTORE_PREFIX_ANNOTATION) or None
    if prefix is not None:
        try:
            contract.check_restore_prefix(prefix)
        except SettingError as exc:
            raise Refusal(
                f"annotation {names.RESTORE_PREFIX_ANNOTATION}={prefix!r:.200} {exc} (and "
                "no leading or trailing '/')"
            ) from exc
        if _annotation(annotations, names.RESTORE_KEY_ANNOTATION):
            raise Refusal(
                f"annotations {names.RESTORE_KEY_ANNOTATION} and "
                f"{names.RESTORE_PREFIX_ANNOTATION} conflict: name the owner key the pod "
                "shares with the pod it replaces, or the prefix it restores, not both"
            )
    return PodRequest(
        config=config,
        role=Role(role),
        volume=volume,
        mount_path=mount_path,
        storage_path=storage_path,
        restore=None if not restore else restore == "true",
        restore_prefix=prefix,
    )


def read_overrides(pod: Mapping[str, Any]) -> SidecarOverrides:
    """The pod's overrides of its sidecar (``trialsync.io/sidecar-*``), checked; Refusal
    saying which annotation is wrong and what it must be. An empty value sets nothing."""
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    parts: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for (part, resource), key in names.SIDECAR_RESOURCE_ANNOTATIONS.items():
        value = _annotation(annotations, key)
        if value:
            parts[part][resource] = _positive_quantity(key, value)
    for resource, request in parts["requests"].items():
        limit = parts["limits"].get(resource)
        if limit is not None and quantity.parse(request) > quantity.parse(limit):
            request_key = names.SIDECAR_RESOURCE_ANNOTATIONS["requests", resource]
            limit_key = names.SIDECAR_RESOURCE_ANNOTATIONS["limits", resource]
            raise Refusal(
                f"annotations {request_key}={request} and {limit_key}={limit} conflict: the "
                f"sidecar's {resource} request is above its limit; lower the request or raise "
                "the limit"
            )
    return SidecarOverrides(
        requests=parts["requests"],
        limits=parts["limits"],
        uid=_id_annotation(annotations, names.SIDECAR_UID_ANNOTATION, "user"),
        gid=_id_annotation(annotations, names.SIDECAR_GID_ANNOTATION, "group"),
        bandwidth_limit=_bandwidth_annotation(annotations),
    )


def _bandwidth_annotation(annotations: Mapping[str, Any]) -> int | None:
    key = names.BANDWIDTH_LIMIT_ANNOTATION
    value = _annotation(annotations, key)
    if not value:
        return None
    try:
        return contract.BANDWIDTH_LIMIT.parse(value)
    except SettingError as exc:
        raise Refusal(f"annotation {key}={value!r:.60}: {exc}") from None


def _positive_quantity(key: str, value: str) -> str:
    try:
        amount = quantity.parse(value)
    except ValueError:
        raise Refusal(
            f"annotation {key}={value!r:.60} is not a resource quantity (e.g. 500m, 2, 512Mi, 1Gi)"
        ) from None
    if amount <= 0:
        raise Refusal(f"annotation {key}={value!r:.60} must be more than 0")
    return value.strip()


def _id_annotation(annotations: Mapping[str, Any], key: str, what: str) -> int | None:
    value = _annotation(annotations, key)
    if not value:
        return None
    if not _ID.fullmatch(value) or int(value) > MAX_ID:
        raise Refusal(
            f"annotation {key}={value!r:.60} must be a {what} id: a whole number from 0 to {MAX_ID}"
        )
    return int(value)


def _annotation(annotations: Mapping[str, Any], key: str, default: str = "") -> str:
    """An annotation's value, ``default`` when absent; Refusal when it is not a string
    (the apiserver allows only strings, but a body from elsewhere may hold anything)."""
    value = annotations.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise Refusal(f"annotation {key} must be a string, got {type(value).__name__}")
    return value


def plan(pod: Mapping[str, Any], namespace: str, lookup: Lookup, defaults: Defaults) -> Result:
    """What to do with ``pod`` (created in ``namespace``); Refusal if it must be refused.

    ``lookup(namespace, name)`` gives a SyncConfig's view, or None if there is none.
    """
    if has_sidecar(pod):
        # injected already (a reinvocation, or a pod spec copied from one)
        return Result(skipped=REASON_ALREADY_INJECTED)
    # The SyncConfig first: whether it exists, is valid and syncs at all decides before
    # the pod's other annotations do.
    config = _with_reason(config_name, pod)
    view = lookup(namespace, config)
    if view is None:
        raise Refusal(
            f"SyncConfig {namespace}/{config} (annotation {names.CONFIG_ANNOTATION}) "
            "does not exist: create it, or fix the annotation",
            REASON_CONFIG_MISSING,
        )
    if not view.valid:
        raise Refusal(
            f"SyncConfig {namespace}/{config} is invalid: {view.message}", REASON_CONFIG_INVALID
        )
    if view.mode is Mode.DISABLED:
        return Result(
            warnings=[
                f"SyncConfig {namespace}/{view.name} disables syncing (syncer: none, no "
                "uploadDir): no sidecar was injected"
            ],
            config=view,
            skipped=REASON_SYNCING_DISABLED,
        )
    return _inject(pod, namespace, _with_reason(read_request, pod), view, defaults)


def annotations_refused(pod: Mapping[str, Any]) -> bool:
    """Whether the webhook would refuse ``pod``'s own trialsync.io/* annotations, whatever
    its SyncConfig (``read_request`` and ``read_overrides``)."""
    try:
        read_request(pod)
        read_overrides(pod)
    except Refusal:
        return True
    return False


_T = TypeVar("_T")


def _with_reason(read: Callable[[Mapping[str, Any]], _T], pod: Mapping[str, Any]) -> _T:
    """``read(pod)``, its Refusal marked as one about the pod's annotations."""
    try:
        return read(pod)
    except Refusal as exc:
        exc.reason = REASON_INVALID_ANNOTATIONS
        raise


def _inject(
    pod: Mapping[str, Any],
    namespace: str,
    request: PodRequest,
    view: ConfigView,
    defaults: Defaults,
) -> Result:
    spec = _mapping(pod.get("spec"))
    # Shallow copies: the injection only replaces a container's volumeMounts list (see
    # _mount_trial_dir), never changes anything nested in the pod.
    volumes = [dict(v) for v in _list(spec.get("volumes"))]
    containers = [dict(c) for c in _list(spec.get("containers"))]
    init_containers = [dict(c) for c in _list(spec.get("initContainers"))]
    names_before = {v.get("name") for v in volumes}
    for reserved in (names.SCRATCH_VOLUME, names.CREDENTIALS_VOLUME, names.HEAD_SECRET_VOLUME):
        if reserved in names_before:
            raise Refusal(f"the pod already has a volume named {reserved!r}")

    overrides = _with_reason(read_overrides, pod)
    duty = contract.duty_of(view.mode, request.role)
    restore, restore_warnings = _restore(pod, namespace, request, view, duty)
    root, mounts = _trial_volume(
        request, view, duty, volumes, [*init_containers, *containers], bool(restore)
    )
    volumes.append({"name": names.SCRATCH_VOLUME, "emptyDir": {"sizeLimit": defaults.scratch_size}})
    mounts.append({"name": names.SCRATCH_VOLUME, "mountPath": contract.SCRATCH_DIR})
    if view.credentials_secret:
        # A volume, not envFrom: the kubelet updates it when the Secret changes, and the
        # sidecar reads each key named like a variable from its file (rotation).
        volumes.append(
            {"name": names.CREDENTIALS_VOLUME, "secret": {"secretName": view.credentials_secret}}
        )
        mounts.append(
            {
                "name": names.CREDENTIALS_VOLUME,
                "mountPath": contract.CREDENTIALS_MOUNT,
                "readOnly": True,
            }
        )
    if duty in (Duty.SEND, Duty.RECEIVE):
        volumes.append(head_secret_volume(view, duty))
        mounts.append(
            {
                "name": names.HEAD_SECRET_VOLUME,
                "mountPath": contract.HEAD_SECRET_MOUNT,
                "readOnly": True,
            }
        )
    resources, resource_warnings = _sidecar_resources(spec, view, defaults, overrides)
    uid, gid = _trainer_user(spec, containers)
    run_uid, run_gid, share_files = _sidecar_user(uid, gid, overrides)
    below_mount = root != mounts[0]["mountPath"]
    bandwidth = (
        view.bandwidth_limit if overrides.bandwidth_limit is None else overrides.bandwidth_limit
    )
    env = _env(
        namespace,
        request,
        view,
        duty,
        root,
        resources,
        share_files,
        below_mount,
        restore,
        bandwidth,
    )
    if view.workload_identity:
        env, mounts = _copy_web_identity(containers, env, mounts)
    _check_sidecar_mounts(mounts)
    sidecar: JsonDict = {
        "name": names.SIDECAR_NAME,
        "image": view.image or defaults.image,
        "imagePullPolicy": view.pull_policy or defaults.pull_policy,
        "restartPolicy": "Always",
        "args": ["sync"],
        "env": env,
        "ports": _ports(duty),
        "startupProbe": {
            # Ready once the ledger is recovered and the store answered: the trainer starts
            # only when its checkpoints can be saved.
            "httpGet": {"path": "/readyz", "port": contract.HTTP_PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            # A restore has restoreTimeoutSeconds of its own: the sidecar, not the probe,
            # ends one that takes longer, saying so.
            "failureThreshold": STARTUP_SECONDS + (view.restore_timeout if restore else 0),
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": contract.HTTP_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": resources,
        "securityContext": _security_context(run_uid, run_gid),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    init_containers.append(sidecar)

    added = [v["name"] for v in volumes if v.get("name") not in names_before]
    patch: JsonDict = {
        **_metadata(pod, view, request, sidecar["image"], added),
        "initContainers": init_containers,
        "volumes": volumes,
    }
    if request.mount_path is not None:
        patch["containers"] = containers
    warnings = _warnings(spec, view, uid if overrides.uid is None else None)
    warnings += _user_warnings(overrides) + resource_warnings + restore_warnings
    if view.terminating:
        warnings.append(
            f"SyncConfig {namespace}/{view.name} is being deleted: this pod syncs as it says, "
            "and the SyncConfig stays until the pods that use its head-node service have "
            "finished; create a new SyncConfig for new work"
        )
    return Result(patch=patch, warnings=warnings, config=view)


#: The head-node Secret's keys each duty mounts: the head serves with its certificate and
#: key; a worker checks the head against the CA certificate and never holds the key.
HEAD_SECRET_KEYS: Mapping[Duty, tuple[str, ...]] = {
    Duty.RECEIVE: (names.HEAD_TOKEN_KEY, names.HEAD_CERT_KEY, names.HEAD_KEY_KEY),
    Duty.SEND: (names.HEAD_TOKEN_KEY, names.HEAD_CA_KEY),
}


def head_secret_volume(view: ConfigView, duty: Duty) -> JsonDict:
    """The head-node Secret as a volume of the files ``duty`` needs, and no other."""
    return {
        "name": names.HEAD_SECRET_VOLUME,
        "secret": {
            "secretName": names.head_secret_name(view.name, view.uid),
            "items": [{"key": key, "path": key} for key in HEAD_SECRET_KEYS[duty]],
        },
    }


def _head_file(key: str) -> str:
    return posixpath.join(contract.HEAD_SECRET_MOUNT, key)


#: What the sidecar restores: ("key", k) the trials of an owner key, ("prefix", p) every
#: trial below a prefix; None: no restore.
RestoreScope = tuple[str, str] | None


def _restore(
    pod: Mapping[str, Any], namespace: str, request: PodRequest, view: ConfigView, duty: Duty
) -> tuple[RestoreScope, list[str]]:
    """Whether the pod's sidecar restores at start, and what; with the warnings to give."""
    wanted = view.restore if request.restore is None else request.restore
    if not wanted:
        return None, []
    if duty not in (Duty.UPLOAD, Duty.SEND):
        if request.restore:  # asked for by this pod, not only by its SyncConfig
            return None, [
                "restore on start is off for this pod: the head-node service's volume is "
                "its workers' store, so nothing holds a copy of it to restore from"
            ]
        return None, []
    if view.syncer != "auto":
        # Only the pod's annotation gets here: a SyncConfig asking for a restore with
        # another syncer is refused when it is applied.
        raise Refusal(
            f'annotation {names.RESTORE_ANNOTATION}="true" cannot be served by SyncConfig '
            f"{namespace}/{view.name} (syncer {view.syncer!r}): "
            f"{contract.RESTORE_NEEDS_AUTO}",
            REASON_INVALID_ANNOTATIONS,
        )
    if request.restore_prefix is not None:
        return ("prefix", request.restore_prefix), []
    key = ownership.owner_key(pod, namespace)
    if key is None:
        return None, [
            "restore on start is off for this pod: it belongs to no Job, StatefulSet or "
            "RayCluster head, so no pod that replaces it would share its trials; set "
            f"annotation {names.RESTORE_KEY_ANNOTATION} (an owner key) or "
            f"{names.RESTORE_PREFIX_ANNOTATION} (a prefix of the upload dir)"
        ]
    return ("key", key), []


def _trial_volume(
    request: PodRequest,
    view: ConfigView,
    duty: Duty,
    volumes: list[JsonDict],
    containers: list[JsonDict],
    restore: bool,
) -> tuple[str, list[JsonDict]]:
    """The sidecar's root and its mount of the trial volume; with a mount path, the
    emptyDir is added to ``volumes`` and mounted in every one of ``containers``."""
    present = {v.get("name") for v in volumes}
    mount: JsonDict
    if request.volume is not None:
        if request.volume not in present:
            raise Refusal(
                f"annotation {names.VOLUME_ANNOTATION}={request.volume!r:.100} names no volume of "
                f"the pod (it has: {', '.join(sorted(map(str, present))) or 'none'})"
            )
        # The sidecar sees the volume as the trainer does (its subPath too), at its own path.
        trainer_mount = _trainer_mount(containers, request.volume)
        mount = {"name": request.volume, "mountPath": contract.TRIAL_MOUNT}
        if trainer_mount.get("subPath"):
            mount["subPath"] = trainer_mount["subPath"]
        seen_at = str(trainer_mount.get("mountPath") or contract.TRIAL_MOUNT)
    else:
        assert request.mount_path is not None
        if names.TRIAL_VOLUME in present:
            raise Refusal(f"the pod already has a volume named {names.TRIAL_VOLUME!r}")
        volumes.append({"name": names.TRIAL_VOLUME, "emptyDir": {}})
        for container in containers:
            _mount_trial_dir(container, request.mount_path)
        # The sidecar mounts it at its own path: the trainer's may be one its user cannot
        # reach in the sidecar's image (/root/ray_results: /root is 0700 there).
        mount = {"name": names.TRIAL_VOLUME, "mountPath": contract.TRIAL_MOUNT}
        seen_at = request.mount_path
    below = _below(seen_at, request.storage_path)
    root = posixpath.join(mount["mountPath"], below) if below else str(mount["mountPath"])
    # Read-only unless the sidecar writes there: a head receiving workers' trial dirs, the
    # record of sent checkpoints that mirrorDeletes keeps on the volume, the storage path
    # below the mount, which the sidecar makes (it starts before the trainer), or a restore.
    if not (duty is Duty.RECEIVE or view.mirror_deletes or below or restore):
        mount["readOnly"] = True
    return root, [mount]


def _trainer_mount(containers: Sequence[Mapping[str, Any]], volume: str) -> Mapping[str, Any]:
    """How the trainer (the first container that mounts ``volume``) mounts it; {} if none."""
    for container in containers:
        for mount in _list(container.get("volumeMounts")):
            if mount.get("name") == volume:
                found: Mapping[str, Any] = mount
                return found
    return {}


def _below(mount_path: str, storage_path: str | None) -> str:
    """Where ``storage_path`` is below ``mount_path``, relative ("" for the mount itself);
    Refusal when it is not on the trial volume."""
    if storage_path is None or storage_path == mount_path:
        return ""
    if not storage_path.startswith(mount_path.rstrip("/") + "/"):
        raise Refusal(
            f"annotation {names.STORAGE_PATH_ANNOTATION}={storage_path!r:.200} is not on the "
            f"trial volume, which the trainer mounts at {mount_path}: give a path below it"
        )
    return storage_path[len(mount_path.rstrip("/")) + 1 :]


def _metadata(
    pod: Mapping[str, Any], view: ConfigView, request: PodRequest, image: str, added: list[str]
) -> JsonDict:
    """The pod's labels (the head Service selects on them) and annotations, with the status
    annotation that records what was injected."""
    meta = _mapping(pod.get("metadata"))
    labels = {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()}
    labels[names.CONFIG_LABEL] = view.name
    labels[names.ROLE_LABEL] = request.role.value
    annotations = {str(k): str(v) for k, v in _mapping(meta.get("annotations")).items()}
    annotations[names.STATUS_ANNOTATION] = json.dumps(
        {
            "version": STATUS_VERSION,
            "container": names.SIDECAR_NAME,
            "volumes": added,
            "config": view.name,
            "generation": view.generation,
            "uid": view.uid,
            "image": image,
            "role": request.role.value,
            "mode": view.mode.value,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return {"labels": labels, "annotations": annotations}


def _warnings(spec: Mapping[str, Any], view: ConfigView, uid: int | None) -> list[str]:
    """What the admission warns about: a pod running as root, a grace period too short
    for the final sync."""
    warnings = []
    if uid == 0:
        warnings.append(
            "the pod runs as root (runAsUser: 0), so the trialsync sidecar does too, with "
            "every capability dropped; run the pod as a non-root user where you can"
        )
    grace = _first_int(spec.get("terminationGracePeriodSeconds"), DEFAULT_GRACE)
    needed = contract.grace_needed(view.final_sync_timeout)
    if grace is not None and grace < needed:
        warnings.append(
            f"terminationGracePeriodSeconds={grace} is shorter than the sidecar's shutdown "
            f"needs ({view.final_sync_timeout} s of spec.finalSyncTimeoutSeconds after the "
            f"trainer exits, + {contract.EXIT_MARGIN} s for the trainer to stop and the sidecar "
            f"to exit): the last checkpoint may not be durable; set it to at least {needed}"
        )
    return warnings


def _env(
    namespace: str,
    request: PodRequest,
    view: ConfigView,
    duty: Duty,
    root: str,
    resources: Mapping[str, Mapping[str, str]],
    share_files: bool,
    create_root: bool,
    restore: RestoreScope = None,
    bandwidth_limit: int | None = None,
) -> list[JsonDict]:
    """The sidecar's settings as its ``TRIALSYNC_*`` variables (``trialsync.contract``):
    every setting the SyncConfig holds, where the pod keeps its data (and whether the
    sidecar makes that dir, below the mount) and its role, whether its files must be open
    to a trainer of unknown uid, and where a worker reaches the head; the files of the
    head-node Secret (``head_secret_volume``)."""
    values: dict[str, Any] = {
        "root": root,
        "role": request.role.value,
        "syncer": view.syncer,
        "sync_period": view.sync_period,
        "sync_timeout": view.sync_timeout,
        "sync_artifacts": view.sync_artifacts,
        "sync_on_checkpoint": view.sync_on_checkpoint,
        "checkpoint_pattern": view.checkpoint_pattern,
        "checkpoint_settle": view.checkpoint_settle,
        "final_sync_timeout": view.final_sync_timeout,
        "upload_memory": upload_memory(resources),
    }
    if view.upload_dir:
        values["upload_dir"] = view.upload_dir
    if view.exclude:
        values["exclude"] = view.exclude
    if view.mirror_deletes:
        values["mirror_deletes"] = True
    if view.keep_checkpoints is not None and duty is not Duty.RECEIVE:
        # The head's own service holds what workers send; its sidecar uploads nothing.
        values["keep_checkpoints"] = view.keep_checkpoints
    if bandwidth_limit and duty is not Duty.RECEIVE:
        values["bandwidth_limit"] = bandwidth_limit
    options = json.loads(view.storage_options)
    if options:
        values["storage_options"] = options
    if create_root:
        values["create_root"] = True
    if restore is not None:
        values["restore"] = True
        values["restore_timeout"] = view.restore_timeout
        values[f"restore_{restore[0]}"] = restore[1]
    if share_files:
        values["share_files"] = True
    if duty is Duty.SEND:
        values["head_url"] = names.head_url(view.name, namespace)
        values["head_ca_file"] = _head_file(names.HEAD_CA_KEY)
    if duty is Duty.RECEIVE:
        values["receiver_cert_file"] = _head_file(names.HEAD_CERT_KEY)
        values["receiver_key_file"] = _head_file(names.HEAD_KEY_KEY)
    if duty in (Duty.SEND, Duty.RECEIVE):
        values["head_token_file"] = _head_file(names.HEAD_TOKEN_KEY)
    env: list[JsonDict] = [{"name": k, "value": v} for k, v in contract.environment(values)]
    # The root filesystem is read-only: anything a library writes goes to the scratch dir.
    env += [{"name": "TMPDIR", "value": contract.SCRATCH_DIR}]
    env += [{"name": "HOME", "value": contract.SCRATCH_DIR}]
    return env


def _ports(duty: Duty) -> list[JsonDict]:
    ports: list[JsonDict] = [
        {"name": "trialsync-http", "containerPort": contract.HTTP_PORT, "protocol": "TCP"}
    ]
    if duty is Duty.RECEIVE:
        ports.append(
            {"name": "trialsync-head", "containerPort": contract.HEAD_PORT, "protocol": "TCP"}
        )
    return ports


def _resources(view: ConfigView, defaults: Defaults) -> dict[str, dict[str, str]]:
    """Requests and limits, always both (quotas and LimitRanges refuse containers without)."""
    given: Mapping[str, Mapping[str, str]] = json.loads(view.resources)
    requests = {**defaults.requests, **given.get("requests", {})}
    limits = {**defaults.limits, **given.get("limits", {})}
    for resource, request in list(requests.items()):
        limit = limits.get(resource)
        if limit is None:
            limits[resource] = request
        elif _amount(request, resource) > _amount(limit, resource):
            # One side came from the defaults (the SyncConfig's own pair was validated):
            # the one the user set wins.
            if resource in given.get("requests", {}):
                limits[resource] = request
            else:
                requests[resource] = limit
    return {"requests": requests, "limits": limits}


def _sidecar_resources(
    spec: Mapping[str, Any], view: ConfigView, defaults: Defaults, overrides: SidecarOverrides
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The sidecar's requests and limits, with the warnings to give: the operator's
    defaults, under the SyncConfig's, under the pod's annotations (of a request and a limit
    from different places, the pod's wins); in a pod whose containers are all Guaranteed,
    the requests the pod does not set are raised to the limits, so it stays Guaranteed."""
    resources = _resources(view, defaults)
    requests = {**resources["requests"], **overrides.requests}
    limits = {**resources["limits"], **overrides.limits}
    for resource, request in list(requests.items()):
        limit = limits.get(resource)
        if limit is None:
            limits[resource] = request
        elif _amount(request, resource) > _amount(limit, resource):
            # Both from the pod were checked (read_overrides): one side is the pod's.
            if resource in overrides.requests:
                limits[resource] = request
            else:
                requests[resource] = limit
    warnings: list[str] = []
    if pod_qos(spec) == GUARANTEED and not _pod_level_resources(spec):
        warnings = _keep_guaranteed(requests, limits, overrides)
    return {"requests": requests, "limits": limits}, warnings


def _keep_guaranteed(
    requests: dict[str, str], limits: Mapping[str, str], overrides: SidecarOverrides
) -> list[str]:
    """Raise the sidecar's cpu and memory requests to its limits (in place), but for a
    request the pod's annotation sets; what was done, as warnings."""
    raised, apart = [], []
    for resource in QOS_RESOURCES:
        limit = limits.get(resource)
        request = requests.get(resource)
        if limit is None:
            apart.append(f"the sidecar has no {resource} limit")
        elif request is not None and _amount(request, resource) == _amount(limit, resource):
            continue
        elif resource in overrides.requests:
            key = names.SIDECAR_RESOURCE_ANNOTATIONS["requests", resource]
            apart.append(f"annotation {key}={request} is below the {resource} limit {limit}")
        else:
            requests[resource] = limit
            raised.append(f"{resource} {limit}")
    warnings = []
    if raised:
        warnings.append(
            "every container of the pod has cpu and memory requests equal to its limits "
            "(QoS class Guaranteed): the trialsync sidecar's requests were raised to its "
            f"limits ({', '.join(raised)}) so that the pod stays Guaranteed; annotations "
            f"{names.SIDECAR_RESOURCE_ANNOTATIONS['limits', 'cpu']} and "
            f"{names.SIDECAR_RESOURCE_ANNOTATIONS['limits', 'memory']} set them"
        )
    if apart:
        warnings.append(
            f"every container of the pod is Guaranteed, but {'; '.join(apart)}: the pod's QoS "
            "class becomes Burstable (it is evicted sooner and gets no exclusive cores); "
            "remove the request's annotation, or set it equal to the limit"
        )
    return warnings


def pod_qos(spec: Mapping[str, Any]) -> str:
    """The pod's QoS class as Kubernetes computes it (``ComputePodQOS``, in k8s.io/kubernetes
    pkg/apis/core/helper/qos, 1.37), once the apiserver defaulted each container's missing
    requests to its limits. With pod-level resources (``spec.resources`` setting cpu,
    memory or hugepages-*), from those; else every init container (a native sidecar or
    not) and container counts: one without requests and limits is BestEffort, one whose
    cpu and memory both have request == limit > 0 Guaranteed, any other Burstable; the
    pod is Guaranteed or BestEffort when all its containers are, else Burstable."""
    if _pod_level_resources(spec):
        return _requirements_qos(_mapping(spec.get("resources")))
    classes = {
        _requirements_qos(_mapping(c.get("resources")))
        for c in [*_list(spec.get("initContainers")), *_list(spec.get("containers"))]
    }
    if len(classes) > 1:
        return BURSTABLE
    return classes.pop() if classes else BEST_EFFORT


def _pod_level_resources(spec: Mapping[str, Any]) -> bool:
    """Whether the pod sets pod-level resources, which then decide its QoS class."""
    resources = _mapping(spec.get("resources"))
    return any(
        name in QOS_RESOURCES or str(name).startswith("hugepages-")
        for part in ("requests", "limits")
        for name in _mapping(resources.get(part))
    )


def _requirements_qos(resources: Mapping[str, Any]) -> str:
    limits = _mapping(resources.get("limits"))
    # The apiserver's defaults: a request not given is its limit.
    requests = {**limits, **_mapping(resources.get("requests"))}
    if not requests and not limits:
        return BEST_EFFORT
    classes = set()
    for resource in QOS_RESOURCES:
        request, limit = _qos_amount(requests.get(resource)), _qos_amount(limits.get(resource))
        if request is None or limit is None or request != limit:
            return BURSTABLE
        classes.add(BEST_EFFORT if request == 0 else GUARANTEED)
    return classes.pop() if len(classes) == 1 else BURSTABLE


def _qos_amount(value: object) -> Decimal | None:
    """A quantity as the QoS rule reads it: absent is 0; None when it is no quantity (the
    apiserver refuses such a pod; here it only counts as not Guaranteed)."""
    if value is None:
        return Decimal(0)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return quantity.parse(str(value))
    except ValueError:
        return None


def _amount(value: str, resource: str) -> Decimal:
    try:
        return quantity.parse(value)
    except ValueError as exc:
        raise Refusal(f"sidecar resources: {resource}: {exc}") from exc


def upload_memory(resources: Mapping[str, Mapping[str, str]]) -> int:
    """Bytes of upload buffers that fit the sidecar's memory limit with room to spare."""
    limit = resources.get("limits", {}).get("memory")
    if limit is None:
        return UPLOAD_MEMORY_MAX
    share = int(quantity.parse(limit) * UPLOAD_MEMORY_SHARE)
    return max(UPLOAD_MEMORY_MIN, min(UPLOAD_MEMORY_MAX, share))


def _trainer_user(
    spec: Mapping[str, Any], containers: Sequence[Mapping[str, Any]]
) -> tuple[int | None, int | None]:
    """The uid and gid the trainer (the main, first container) runs as, where the pod
    says: as the kubelet decides, the container's own setting, else the pod's; None where
    neither sets one."""
    pod_context = _mapping(spec.get("securityContext"))
    main = _mapping(containers[0].get("securityContext")) if containers else {}
    uid = _first_int(main.get("runAsUser"), pod_context.get("runAsUser"))
    gid = _first_int(main.get("runAsGroup"), pod_context.get("runAsGroup"))
    return uid, gid


def _sidecar_user(
    uid: int | None, gid: int | None, overrides: SidecarOverrides
) -> tuple[int | None, int | None, bool]:
    """The uid and gid the sidecar runs as (None: as ``_security_context`` decides), the
    pod's annotations over the trainer's; and whether it must share its files (make them
    writable by every user), as it must whenever its uid is not known to be the trainer's."""
    run_uid = uid if overrides.uid is None else overrides.uid
    run_gid = gid if overrides.gid is None else overrides.gid
    share_files = uid is None or run_uid != uid
    return run_uid, run_gid, share_files


def _user_warnings(overrides: SidecarOverrides) -> list[str]:
    if overrides.uid == 0:
        return [
            f"annotation {names.SIDECAR_UID_ANNOTATION}=0 runs the trialsync sidecar as root, "
            "with every capability dropped; give a non-root user where you can"
        ]
    return []


def _security_context(uid: int | None, gid: int | None) -> JsonDict:
    """Restrictive, and as the trainer's user where known (so the sidecar can read what
    it writes), else the image's non-root user."""
    user = NON_ROOT_UID if uid is None else uid
    context: JsonDict = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": user,
        "runAsGroup": user if gid is None else gid,
    }
    if user != 0:
        context["runAsNonRoot"] = True
    return context


def _copy_web_identity(
    containers: Sequence[Mapping[str, Any]], env: list[JsonDict], mounts: list[JsonDict]
) -> tuple[list[JsonDict], list[JsonDict]]:
    """Workload identity on AWS (IRSA): if a webhook before ours gave the pod's containers
    a web-identity token, give the sidecar the same variables and token mount."""
    for container in containers:
        found = {
            e.get("name"): e
            for e in _list(container.get("env"))
            if isinstance(e, Mapping) and e.get("name") in _WEB_IDENTITY_ENV
        }
        token_file = _mapping(found.get("AWS_WEB_IDENTITY_TOKEN_FILE")).get("value")
        if not isinstance(token_file, str):
            continue
        env = env + [dict(e) for e in found.values()]
        for mount in _list(container.get("volumeMounts")):
            path = _mapping(mount).get("mountPath")
            if isinstance(path, str) and token_file.startswith(path.rstrip("/") + "/"):
                mounts = [*mounts, {**dict(mount), "readOnly": True}]
                break
        break
    return env, mounts


def _check_sidecar_mounts(mounts: Sequence[Mapping[str, Any]]) -> None:
    """Refusal when two of the sidecar's mounts collide: at one path (the apiserver would
    refuse the pod: "mountPath: must be unique"), or one inside another whose mount point
    the runtime cannot or must not make there: inside the trial volume (a directory the
    trainer would see, and a failure where the sidecar mounts the volume read-only) or a
    read-only volume (the credentials, a web-identity token). Only the sidecar's scratch
    emptyDir may hold another mount, away from the files the sidecar keeps there
    (``/tmp/trialsync*``). The trial volume is at the sidecar's own path
    (``TRIAL_MOUNT``), whatever the trainer's: only a mount copied from the trainer (a
    web-identity token) can clash."""
    paths = [(posixpath.normpath(str(m.get("mountPath", ""))), m) for m in mounts]
    for i, (path, mount) in enumerate(paths):
        for other_path, other in paths[i + 1 :]:
            if path == other_path:
                raise Refusal(_mount_clash(mount, other, path, ""))
            for outer, inner, inner_path in ((mount, other, other_path), (other, mount, path)):
                outer_path = str(outer["mountPath"]).rstrip("/")
                if not inner_path.startswith(outer_path + "/"):
                    continue
                below = inner_path[len(outer_path) + 1 :]
                if outer.get("name") != names.SCRATCH_VOLUME or below.startswith("trialsync"):
                    raise Refusal(_mount_clash(inner, outer, inner_path, "inside"))


def _mount_clash(first: Mapping[str, Any], second: Mapping[str, Any], path: str, how: str) -> str:
    """What a refusal for two clashing sidecar mounts says, and what to change."""
    relation = "at one path" if not how else f"one inside the other ({path})"
    return (
        f"the sidecar would mount {_mount_role(first)} ({first['mountPath']}) and "
        f"{_mount_role(second)} ({second['mountPath']}) {relation}, which Kubernetes refuses "
        "or cannot start: move the pod's mount that the sidecar copies"
    )


def _mount_role(mount: Mapping[str, Any]) -> str:
    """What one of the sidecar's mounts is, for a refusal."""
    name = mount.get("name")
    if name == names.SCRATCH_VOLUME:
        return "its scratch emptyDir"
    if name == names.CREDENTIALS_VOLUME:
        return "the SyncConfig's credentials Secret"
    if name == names.HEAD_SECRET_VOLUME:
        return "the SyncConfig's head-node Secret"
    if name == names.TRIAL_VOLUME:
        return "the trial volume"
    return f"volume {name!r} of the pod"


def _mount_trial_dir(container: JsonDict, path: str) -> None:
    mounts = [dict(m) for m in _list(container.get("volumeMounts"))]
    for mount in mounts:
        if posixpath.normpath(str(mount.get("mountPath", ""))) == path:
            raise Refusal(
                f"container {container.get('name')!r} already mounts volume "
                f"{mount.get('name')!r} at {path}: use annotation {names.VOLUME_ANNOTATION}="
                f"{mount.get('name')} to sync that volume instead"
            )
    mounts.append({"name": names.TRIAL_VOLUME, "mountPath": path})
    container["volumeMounts"] = mounts


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has the sidecar already: the webhook then leaves it alone."""
    spec = _mapping(pod.get("spec"))
    return any(
        _mapping(c).get("name") == names.SIDECAR_NAME
        for c in [*_list(spec.get("initContainers")), *_list(spec.get("containers"))]
    )


def _first_int(*values: object) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
