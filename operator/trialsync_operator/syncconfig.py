"""A SyncConfig object read into a validated, immutable view (pure functions, no I/O).

The webhook answers from these views, the reconciler turns them into status conditions,
and the injector turns them into a sidecar. ``view_of`` never raises: whatever the body
holds (the CRD schema guards the apiserver, but an operator must survive an object
written before a schema change), it returns a view, valid or saying what to fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from trialsync.config import (
    DEFAULT_SYNC_PERIOD,
    DEFAULT_SYNC_TIMEOUT,
    PACKAGE_FOR,
    SyncConfig,
    quoted,
)
from trialsync_operator import quantity

DEFAULT_CHECKPOINT_PATTERN = "checkpoint_[0-9]*"
DEFAULT_SETTLE_SECONDS = 3
DEFAULT_FINAL_SYNC_TIMEOUT = 25
#: The longest period or timeout accepted: a week (the CRD says the same).
MAX_SECONDS = 7 * 24 * 3600
#: The CRD's bounds of the other durations.
MAX_SETTLE_SECONDS = 3600
MAX_FINAL_SYNC_TIMEOUT = 24 * 3600
#: A Secret's name: an RFC 1123 subdomain.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: Storage option keys that would put a credential into the spec.
CREDENTIAL_OPTIONS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "access_key",
        "secret_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "client_secret",
        "credentials",
        "account_key",
        "sas_token",
        "connection_string",
    }
)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

#: Reasons of the Ready condition.
REASON_VALID = "Valid"
REASON_INVALID = "InvalidSpec"


@dataclasses.dataclass(frozen=True)
class SidecarImage:
    """The sidecar image the operator injects by default, and the URI schemes it serves.

    Which storage backends exist is a property of that image (its Python packages), not
    of the operator's own environment.
    """

    image: str
    schemes: frozenset[str]
    pull_policy: str = "IfNotPresent"

    def check_backend(self, scheme: str, uri: str) -> None:
        """A ``trialsync.config.BackendCheck`` for this image."""
        if scheme in self.schemes:
            return
        package = PACKAGE_FOR.get(scheme)
        needs = f" (it needs {package})" if package else ""
        raise ValueError(
            f"upload_dir {quoted(uri)}: the sidecar image {self.image} cannot serve "
            f"{scheme}://{needs}; it serves {', '.join(sorted(self.schemes))}. Use one of "
            "those, or build a sidecar image with that backend and name it in "
            "spec.sidecar.image"
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
    upload_dir: str | None = None
    syncer: str = "auto"
    sync_period: int = DEFAULT_SYNC_PERIOD
    sync_timeout: int = DEFAULT_SYNC_TIMEOUT
    sync_artifacts: bool = True
    sync_on_checkpoint: bool = True
    storage_options: str = "{}"  # JSON: a frozen view holds no mutable dict
    credentials_secret: str | None = None
    workload_identity: bool = False
    image: str | None = None
    pull_policy: str | None = None
    resources: str = "{}"  # JSON of a ResourceRequirements, or {} for the defaults
    checkpoint_pattern: str = DEFAULT_CHECKPOINT_PATTERN
    excludes: tuple[str, ...] = ()
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    final_sync_timeout: int = DEFAULT_FINAL_SYNC_TIMEOUT
    mirror_deletes: bool = False

    @property
    def mode(self) -> str:
        if self.upload_dir:
            return "upload"
        return "disabled" if self.syncer == "none" else "head"

    @property
    def destination(self) -> str:
        """For the printer column: the upload dir, or where data goes without one."""
        if self.upload_dir:
            return self.upload_dir
        return "disabled" if self.syncer == "none" else "head node"

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
    }
    try:
        fields = _read_spec(body.get("spec", {}))
    except SpecError as exc:
        return ConfigView(**identity, valid=False, message=str(exc))
    view = ConfigView(**identity, **fields)
    try:
        _check(view, sidecar)
    except ValueError as exc:
        return dataclasses.replace(view, valid=False, message=str(exc))
    return view


def _check(view: ConfigView, sidecar: SidecarImage) -> None:
    """The seed's ``validate_upload_dir``, with the backends of the image that will run;
    then what only Kubernetes adds (a custom syncer needs an image that ships it)."""
    seed = SyncConfig(
        upload_dir=view.upload_dir,
        syncer=None if view.syncer == "none" else view.syncer,
        sync_period=view.sync_period,
        sync_timeout=view.sync_timeout,
        sync_artifacts=view.sync_artifacts,
        sync_on_checkpoint=view.sync_on_checkpoint,
    )
    seed.validate_upload_dir(backend=any_scheme if view.image else sidecar.check_backend)
    if view.syncer not in ("auto", "none") and not view.image:
        raise ValueError(
            f"syncer {view.syncer!r} is a custom Syncer class: it runs in a sidecar image "
            "that ships it, so set spec.sidecar.image"
        )


def _read_spec(spec: object) -> dict[str, Any]:
    """The spec's fields, with the seed's defaults; SpecError on a wrong type or value."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be an object, got {_kind(spec)}")
    out: dict[str, Any] = {}
    upload_dir = spec.get("uploadDir")
    if upload_dir is not None and not isinstance(upload_dir, str):
        raise SpecError(f"spec.uploadDir must be a string, got {_kind(upload_dir)}")
    out["upload_dir"] = upload_dir or None
    out["syncer"] = _str(spec, "syncer", "auto")
    out["sync_period"] = _seconds(spec, "syncPeriod", DEFAULT_SYNC_PERIOD)
    out["sync_timeout"] = _seconds(spec, "syncTimeout", DEFAULT_SYNC_TIMEOUT)
    out["sync_artifacts"] = _bool(spec, "syncArtifacts", True)
    out["sync_on_checkpoint"] = _bool(spec, "syncOnCheckpoint", True)
    out["checkpoint_pattern"] = _str(spec, "checkpointPattern", DEFAULT_CHECKPOINT_PATTERN)
    if not out["checkpoint_pattern"] or "/" in out["checkpoint_pattern"]:
        raise SpecError("spec.checkpointPattern must be a non-empty glob of a directory name")
    excludes = spec.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(e, str) and e for e in excludes):
        raise SpecError("spec.excludes must be a list of non-empty glob strings")
    if any("," in e for e in excludes):
        raise SpecError("spec.excludes: a glob may not contain ',' (the sidecar splits on it)")
    out["excludes"] = tuple(excludes)
    out["settle_seconds"] = _seconds(
        spec, "checkpointSettleSeconds", DEFAULT_SETTLE_SECONDS, MAX_SETTLE_SECONDS
    )
    out["final_sync_timeout"] = _seconds(
        spec, "finalSyncTimeoutSeconds", DEFAULT_FINAL_SYNC_TIMEOUT, MAX_FINAL_SYNC_TIMEOUT
    )
    out["mirror_deletes"] = _bool(spec, "mirrorDeletes", False)
    out["storage_options"] = json.dumps(_storage_options(spec.get("storage")), sort_keys=True)
    out.update(_credentials(spec.get("credentials")))
    out.update(_sidecar(spec.get("sidecar")))
    if out["mirror_deletes"] and out["syncer"] != "auto":
        raise SpecError("spec.mirrorDeletes needs syncer auto (a custom Syncer cannot list)")
    return out


def _storage_options(storage: object) -> dict[str, Any]:
    """fsspec storage options from ``spec.storage`` (endpoint, region, addressing style)."""
    if storage is None:
        return {}
    if not isinstance(storage, Mapping):
        raise SpecError(f"spec.storage must be an object, got {_kind(storage)}")
    options: dict[str, Any] = {}
    extra = storage.get("options", {})
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise SpecError("spec.storage.options must map option names to strings")
    for key, value in extra.items():
        if key.lower() in CREDENTIAL_OPTIONS:
            raise SpecError(
                f"spec.storage.options.{key} is a credential; credentials never go in a "
                "SyncConfig: put them in a Secret and name it in spec.credentials.secretRef"
            )
        options[key] = _json_or_str(value)
    endpoint = _opt_str(storage, "endpoint", "spec.storage")
    if endpoint is not None:
        if not endpoint.startswith(("http://", "https://")):
            raise SpecError(f"spec.storage.endpoint {endpoint!r} must be an http(s):// URL")
        options["endpoint_url"] = endpoint
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
        raise SpecError(
            "spec.credentials: give secretRef or serviceAccount, not both (a Secret's keys "
            "would shadow the workload identity)"
        )
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


def _seconds(spec: Mapping[str, Any], field: str, default: int, most: int = MAX_SECONDS) -> int:
    value = spec.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"spec.{field} must be a whole number of seconds, got {_kind(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise SpecError(f"spec.{field} must be a whole number of seconds, got {value!r}")
    if not 0 < value <= most:
        bound = f"{most} (a week)" if most == MAX_SECONDS else str(most)
        raise SpecError(
            f"spec.{field} must be a positive number of seconds, at most {bound}, "
            f"got {_shown(value)}"
        )
    return int(value)


def _bool(spec: Mapping[str, Any], field: str, default: bool) -> bool:
    value = spec.get(field, default)
    if not isinstance(value, bool):
        raise SpecError(f"spec.{field} must be true or false, got {_kind(value)}")
    return value


def _str(spec: Mapping[str, Any], field: str, default: str) -> str:
    value = spec.get(field, default)
    if not isinstance(value, str):
        raise SpecError(f"spec.{field} must be a string, got {_kind(value)}")
    return value


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
