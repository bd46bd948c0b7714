"""A SyncConfig object read into a validated, immutable view (pure functions, no I/O).

The webhook answers from these views, the reconciler turns them into status conditions,
and the injector turns them into a sidecar. ``view_of`` never raises: whatever the body
holds (the CRD schema guards the apiserver, but an operator must survive an object
written before a schema change), it returns a view, valid or saying what to fix.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from trialsync import contract
from trialsync.contract import PACKAGE_FOR, Mode, SettingError, quoted
from trialsync_operator import quantity

C = contract
#: A Secret's name: an RFC 1123 subdomain.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: The messages of the CRD's rules that only Kubernetes has (tests/unit/test_contract.py
#: finds them in the CRD): the operator refuses with the very same words.
NEEDS_IMAGE = (
    "a custom syncer (package.module:Class) runs in a sidecar image that ships it: set "
    "sidecar.image"
)
ONE_CREDENTIAL_SOURCE = (
    "give credentials.secretRef or credentials.serviceAccount, not both (a Secret's keys "
    "would shadow the workload identity)"
)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

#: Reasons of the Ready condition.
REASON_VALID = "Valid"
REASON_INVALID = "InvalidSpec"
REASON_SCHEME = "SchemeNotServed"
REASON_PATH = "PathNotWritable"


class SchemeNotServed(ValueError):
    """The sidecar image that would run does not serve the uploadDir's scheme."""


class PathNotWritable(ValueError):
    """The uploadDir is a path the sidecar has no place to write to."""


#: fsspec's schemes of the local filesystem.
LOCAL_SCHEMES = frozenset({"file", "local"})
#: Why a ``file://`` uploadDir is refused: the injected sidecar has no volume there.
FILE_UPLOAD_DIR = (
    "upload_dir {uri}: a file:// path would be written inside the sidecar's own container, "
    "whose root filesystem is read-only and is lost with the pod; use an object store "
    "(s3://, gs://, any fsspec URI the sidecar image serves), or no uploadDir to sync to the "
    "head node"
)


@dataclasses.dataclass(frozen=True)
class SidecarImage:
    """The sidecar image the operator injects by default, and the URI schemes it serves.

    Which storage backends exist is a property of that image (its Python packages), not
    of the operator's own environment.
    """

    image: str
    schemes: frozenset[str]
    pull_policy: str = "IfNotPresent"
    #: The images a SyncConfig may name besides ``image`` (always allowed): the cluster
    #: admin's choice (the chart's ``sidecar.allowedImages``), never the SyncConfig
    #: author's. An entry ending in ``*`` allows every image that starts with the rest.
    allowed: tuple[str, ...] = ()

    def allows(self, image: str) -> bool:
        return image == self.image or any(
            image.startswith(entry[:-1]) if entry.endswith("*") else image == entry
            for entry in self.allowed
        )

    def check_image(self, image: str) -> None:
        """Refuse a ``spec.sidecar.image`` the cluster admin has not allowed."""
        if self.allows(image):
            return
        raise ValueError(image_not_allowed(image, (self.image, *self.allowed)))

    def check_backend(self, scheme: str, uri: str) -> None:
        """A ``trialsync.config.BackendCheck`` for this image."""
        if scheme in self.schemes:
            return
        package = PACKAGE_FOR.get(scheme)
        needs = f" (it needs {package})" if package else ""
        raise SchemeNotServed(
            f"upload_dir {quoted(uri)}: the sidecar image {self.image} cannot serve "
            f"{scheme}://{needs}; it serves {', '.join(sorted(self.schemes))}. Use "
            "one of those, or build a sidecar image with that backend and name it in "
            "spec.sidecar.image"
        )


def image_not_allowed(image: str, allowed: tuple[str, ...]) -> str:
    """The refusal of an image outside the allowlist (the chart's admission policy says
    the same)."""
    return (
        f"spec.sidecar.image {image} is not an allowed sidecar image (allowed: "
        f"{', '.join(allowed)}): remove spec.sidecar.image to run the default image, or ask "
        "the cluster admin to add it to the chart value sidecar.allowedImages (the "
        "operator's --allowed-sidecar-image)"
    )


def any_scheme(scheme: str, uri: str) -> None:
    """A ``BackendCheck`` for a custom sidecar image: its backends are its own business."""


@dataclasses.dataclass(frozen=True)
class ConfigView:
    """What the operator knows of one SyncConfig, validated.

    ``mode``: ``upload`` (an uploadDir: seed scenarios 1, 2, 4), ``head`` (no uploadDir:
    workers sync to the head node, scenario 3) or ``disabled`` (syncer none, no
    uploadDir). ``message`` says what to fix when ``valid`` is False.
    """

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    valid: bool = True
    message: str = ""
    #: The Ready condition's reason while invalid (REASON_INVALID, _SCHEME, _PATH).
    reason: str = REASON_VALID
    #: Deleted, and held by a finalizer until the pods that use it are gone.
    terminating: bool = False
    upload_dir: str | None = C.UPLOAD_DIR.default
    syncer: str = C.SYNCER.default
    sync_period: int = C.SYNC_PERIOD.default
    sync_timeout: int = C.SYNC_TIMEOUT.default
    sync_artifacts: bool = C.SYNC_ARTIFACTS.default
    sync_on_checkpoint: bool = C.SYNC_ON_CHECKPOINT.default
    storage_options: str = "{}"  # JSON: a frozen view holds no mutable dict
    credentials_secret: str | None = None
    workload_identity: bool = False
    image: str | None = None
    pull_policy: str | None = None
    resources: str = "{}"  # JSON of a ResourceRequirements, or {} for the defaults
    checkpoint_pattern: str = C.CHECKPOINT_PATTERN.default
    exclude: tuple[str, ...] = C.EXCLUDE.default
    checkpoint_settle: int = C.CHECKPOINT_SETTLE.default
    final_sync_timeout: int = C.FINAL_SYNC_TIMEOUT.default
    mirror_deletes: bool = C.MIRROR_DELETES.default
    keep_checkpoints: int | None = C.KEEP_CHECKPOINTS.default
    bandwidth_limit: int | None = C.BANDWIDTH_LIMIT.default
    restore: bool = C.RESTORE.default
    restore_timeout: int = C.RESTORE_TIMEOUT.default

    @property
    def mode(self) -> Mode:
        return contract.mode_of(self.upload_dir, self.syncer)

    @property
    def destination(self) -> str:
        """For the printer column: the upload dir, or where data goes without one."""
        if self.mode is Mode.UPLOAD:
            return str(self.upload_dir)
        return "disabled" if self.mode is Mode.DISABLED else "head node"

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class SpecError(ValueError):
    """A spec field has the wrong type or value; the message names the field."""


def view_of(body: Mapping[str, Any], sidecar: SidecarImage) -> ConfigView:
    """Read and validate a SyncConfig object (a dict as the API serves it)."""
    meta = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    identity: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "uid": str(meta.get("uid") or ""),
        "generation": _int_or_zero(meta.get("generation")),
        "terminating": bool(meta.get("deletionTimestamp")),
    }
    try:
        fields = _read_spec(body.get("spec", {}))
    except SpecError as exc:
        return ConfigView(**identity, valid=False, message=str(exc), reason=REASON_INVALID)
    view = ConfigView(**identity, **fields)
    try:
        _check(view, sidecar)
    except ValueError as exc:
        reason = (
            REASON_SCHEME
            if isinstance(exc, SchemeNotServed)
            else REASON_PATH
            if isinstance(exc, PathNotWritable)
            else REASON_INVALID
        )
        return dataclasses.replace(view, valid=False, message=str(exc), reason=reason)
    return view


def _check(view: ConfigView, sidecar: SidecarImage) -> None:
    """The seed's ``validate_upload_dir``, with the backends of the image that will run,
    and the other checks across fields the sidecar makes; then what only Kubernetes adds
    (an image the cluster admin allows; a custom syncer needs an image that ships it)."""
    if view.image is not None:
        sidecar.check_image(view.image)
    contract.check_seed(
        view.upload_dir,
        view.syncer,
        view.sync_period,
        view.sync_timeout,
        backend=any_scheme if view.image else sidecar.check_backend,
    )
    if view.mode is Mode.UPLOAD and _scheme(str(view.upload_dir)) in LOCAL_SCHEMES:
        raise PathNotWritable(FILE_UPLOAD_DIR.format(uri=quoted(str(view.upload_dir))))
    contract.check_mirror_deletes(view.mirror_deletes, view.syncer)
    contract.check_keep_checkpoints(view.keep_checkpoints, view.syncer)
    contract.check_restore(view.restore, view.syncer)
    if view.syncer not in ("auto", "none") and not view.image:
        raise ValueError(NEEDS_IMAGE)


def _read_spec(spec: object) -> dict[str, Any]:
    """The spec's fields, with the contract's defaults; SpecError on a wrong type or value,
    naming the field (the message after it is the sidecar's and the CRD's own)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be an object, got {_kind(spec)}")
    out: dict[str, Any] = {}
    for field, setting in C.BY_CRD_FIELD.items():
        value = spec.get(field)
        if value is None:
            out[setting.name] = setting.default
        elif setting is C.UPLOAD_DIR and isinstance(value, str) and value:
            # Checked with the other seed fields, in validate_upload_dir's order (the
            # empty text too is refused, as the CRD's schema refuses it).
            out[setting.name] = value
        else:
            try:
                out[setting.name] = setting.check(value)
            except SettingError as exc:
                raise SpecError(f"spec.{field}: {exc}") from None
    out["upload_dir"] = out["upload_dir"] or None
    options = _storage_options(spec.get("storage"), out["upload_dir"])
    out["storage_options"] = json.dumps(options, sort_keys=True)
    out.update(_credentials(spec.get("credentials")))
    out.update(_sidecar(spec.get("sidecar")))
    return out


def _storage_options(storage: object, upload_dir: str | None) -> dict[str, Any]:
    """fsspec storage options from ``spec.storage`` (endpoint, region, addressing style),
    checked as the sidecar checks ``TRIALSYNC_STORAGE_OPTIONS``; for an ``hdfs://``
    upload dir, Hadoop configuration alone."""
    if storage is None:
        return {}
    if not isinstance(storage, Mapping):
        raise SpecError(f"spec.storage must be an object, got {_kind(storage)}")
    scheme = (upload_dir or "").partition("://")[0].lower()
    if scheme in C.HADOOP_CONFIG_SCHEMES:
        for field in ("endpoint", "region", "addressingStyle"):
            if storage.get(field) is not None:
                raise SpecError(
                    f"spec.storage.{field} does not apply to an {scheme}:// upload dir: its "
                    "NameNode is in the URI, and Hadoop configuration goes in "
                    "spec.storage.options"
                )
    options: dict[str, Any] = {}
    extra = storage.get("options", {})
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise SpecError("spec.storage.options must map option names to strings")
    for key, value in extra.items():
        options[key] = _json_or_str(value)
    try:
        C.STORAGE_OPTIONS.check(options)
        if scheme in C.HADOOP_CONFIG_SCHEMES:
            C.check_hadoop_options(options)
    except SettingError as exc:
        raise SpecError(f"spec.storage.options: {exc}") from None
    endpoint = _opt_str(storage, "endpoint", "spec.storage")
    if endpoint is not None:
        try:
            options["endpoint_url"] = contract.check_endpoint(endpoint)
        except SettingError as exc:
            raise SpecError(f"spec.storage.endpoint: {exc}") from None
    region = _opt_str(storage, "region", "spec.storage")
    if region is not None:
        options.setdefault("client_kwargs", {})["region_name"] = region
    style = _opt_str(storage, "addressingStyle", "spec.storage")
    if style is not None:
        if style not in ("auto", "path", "virtual"):
            raise SpecError("spec.storage.addressingStyle must be auto, path or virtual")
        options.setdefault("config_kwargs", {}).setdefault("s3", {})["addressing_style"] = style
    return options


def _credentials(credentials: object) -> dict[str, Any]:
    if credentials is None:
        return {}
    if not isinstance(credentials, Mapping):
        raise SpecError(f"spec.credentials must be an object, got {_kind(credentials)}")
    ref = credentials.get("secretRef")
    identity = credentials.get("serviceAccount")
    if ref is not None and identity is not None:
        raise SpecError(f"spec.credentials: {ONE_CREDENTIAL_SOURCE}")
    if ref is not None:
        name = ref.get("name") if isinstance(ref, Mapping) else None
        if not isinstance(name, str) or len(name) > 253 or not _SECRET_NAME.fullmatch(name):
            raise SpecError(
                "spec.credentials.secretRef.name must name a Secret (lowercase letters, "
                "digits, '-' and '.', at most 253 characters)"
            )
        return {"credentials_secret": ref["name"]}
    if identity is not None:
        if not isinstance(identity, Mapping):
            raise SpecError("spec.credentials.serviceAccount must be an object ({})")
        return {"workload_identity": True}
    return {}


def _sidecar(sidecar: object) -> dict[str, Any]:
    if sidecar is None:
        return {}
    if not isinstance(sidecar, Mapping):
        raise SpecError(f"spec.sidecar must be an object, got {_kind(sidecar)}")
    out: dict[str, Any] = {}
    image = _opt_str(sidecar, "image", "spec.sidecar")
    if image is not None:
        if not image.strip() or image != image.strip():
            raise SpecError("spec.sidecar.image must be an image reference without spaces")
        out["image"] = image
    policy = _opt_str(sidecar, "imagePullPolicy", "spec.sidecar")
    if policy is not None:
        if policy not in PULL_POLICIES:
            raise SpecError(f"spec.sidecar.imagePullPolicy must be one of {PULL_POLICIES}")
        out["pull_policy"] = policy
    resources = sidecar.get("resources")
    if resources is not None:
        out["resources"] = json.dumps(_resources(resources), sort_keys=True)
    return out


def _resources(resources: object) -> dict[str, dict[str, str]]:
    if not isinstance(resources, Mapping):
        raise SpecError("spec.sidecar.resources must be an object with requests and limits")
    out: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        values = resources.get(part)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SpecError(f"spec.sidecar.resources.{part} must map resource names to amounts")
        amounts: dict[str, str] = {}
        for resource, amount in values.items():
            if resource not in ("cpu", "memory", "ephemeral-storage"):
                raise SpecError(
                    f"spec.sidecar.resources.{part}.{resource}: only cpu, memory and "
                    "ephemeral-storage can be set"
                )
            if isinstance(amount, bool) or not isinstance(amount, str | int | float):
                raise SpecError(f"spec.sidecar.resources.{part}.{resource} must be a quantity")
            try:
                quantity.parse(str(amount))
            except ValueError as exc:
                raise SpecError(f"spec.sidecar.resources.{part}.{resource}: {exc}") from None
            amounts[str(resource)] = str(amount)
        out[part] = amounts
    for resource, request in out.get("requests", {}).items():
        limit = out.get("limits", {}).get(resource)
        if limit is not None and quantity.parse(request) > quantity.parse(limit):
            raise SpecError(
                f"spec.sidecar.resources: the {resource} request {request} is above its "
                f"limit {limit}"
            )
    return out


def _scheme(uri: str) -> str:
    return urllib.parse.urlsplit(uri).scheme.lower()


def _opt_str(obj: Mapping[str, Any], field: str, where: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{where}.{field} must be a string, got {_kind(value)}")
    return value


def _json_or_str(value: str) -> Any:
    """An option value as the sidecar's ``--storage-option K=V`` reads it."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _kind(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {_shown(value)}"


def _shown(value: object) -> str:
    """``repr(value)``, cut to 60 characters (an int too long to print is not shown)."""
    try:
        return f"{value!r:.60}"
    except ValueError:
        return "(too long to show)"
