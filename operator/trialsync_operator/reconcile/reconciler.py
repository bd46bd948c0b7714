"""SyncConfig reconciliation: status conditions, Events, and the head-node Secret and Service.

Level-triggered and idempotent: ``reconcile`` compares what is with what should be and
writes only the difference, so it can run for every watch event and again for every
object when this replica becomes the leader. Only the leader runs it.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from trialsync import contract
from trialsync.contract import Mode
from trialsync_operator import kube, names
from trialsync_operator.events import event_body, now, record_event
from trialsync_operator.syncconfig import REASON_INVALID, REASON_VALID, ConfigView

log = logging.getLogger(__name__)

SYNCCONFIGS = f"apis/{names.API_VERSION}/{names.PLURAL}"
SECRETS = "api/v1/secrets"
SERVICES = "api/v1/services"
JsonDict = dict[str, Any]


def desired_status(view: ConfigView, current: Mapping[str, Any], now: str) -> JsonDict:
    """The status a SyncConfig should have (kstatus: ``observedGeneration`` and ``Ready``).

    ``lastTransitionTime`` changes only when the condition's status does.
    """
    previous = _ready(current)
    status = "True" if view.valid else "False"
    condition = {
        "type": "Ready",
        "status": status,
        "reason": REASON_VALID if view.valid else REASON_INVALID,
        "message": _ready_message(view) if view.valid else view.message,
        "observedGeneration": view.generation,
        "lastTransitionTime": (
            previous["lastTransitionTime"]
            if previous and previous.get("status") == status and previous.get("lastTransitionTime")
            else now
        ),
    }
    desired: JsonDict = {
        "observedGeneration": view.generation,
        "destination": view.destination,
        "conditions": [condition],
    }
    if view.mode is Mode.HEAD and view.valid:
        desired["headService"] = names.head_service_name(view.name)
    return desired


def _ready_message(view: ConfigView) -> str:
    if view.mode is Mode.UPLOAD:
        return f"pods that opt in sync to {view.upload_dir}"
    if view.mode is Mode.HEAD:
        return (
            "pods that opt in sync to the head node through Service "
            f"{names.head_service_name(view.name)}"
        )
    return "syncing is disabled (syncer: none, no uploadDir): pods get no sidecar"


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return None


def head_secret(view: ConfigView, token: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "trialsync.io/head-node",
        "metadata": {
            "name": names.head_secret_name(view.name, view.uid),
            "labels": _labels(view, "head-token"),
            "ownerReferences": [owner_reference(view)],
        },
        "data": {names.HEAD_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def head_service(view: ConfigView) -> JsonDict:
    """The Service that selects the SyncConfig's head pod (the webhook labels it)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.head_service_name(view.name),
            "labels": _labels(view, "head-service"),
            "ownerReferences": [owner_reference(view)],
        },
        "spec": {
            "selector": {names.CONFIG_LABEL: view.name, names.ROLE_LABEL: "head"},
            "ports": [
                {
                    "name": "trialsync-head",
                    "port": contract.HEAD_PORT,
                    "targetPort": contract.HEAD_PORT,
                    "protocol": "TCP",
                }
            ],
            # Workers start before the head is ready only if they can resolve it early.
            "publishNotReadyAddresses": True,
        },
    }


def owner_reference(view: ConfigView) -> JsonDict:
    # No blockOwnerDeletion: setting it needs `update` on syncconfigs/finalizers where the
    # OwnerReferencesPermissionEnforcement admission plugin is on, and nothing here needs a
    # foreground deletion to wait for the Secret and the Service.
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": view.name,
        "uid": view.uid,
        "controller": True,
    }


def _labels(view: ConfigView, component: str) -> dict[str, str]:
    return {
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
        names.COMPONENT_LABEL: component,
        names.CONFIG_LABEL: view.name,
    }


class Reconciler:
    def __init__(self, client: kube.Kube) -> None:
        self._kube = client

    async def reconcile(self, view: ConfigView, status: Mapping[str, Any]) -> None:
        """Bring one SyncConfig's status and children in line with its spec."""
        desired = desired_status(view, status, now())
        if view.valid and view.mode is Mode.HEAD:
            await self._ensure_head_objects(view)
        else:
            await self._remove_head_objects(view)
        if not _same(desired, status):
            path = kube.namespaced(SYNCCONFIGS, view.namespace, view.name) + "/status"
            # headService: null removes a stale one (merge-patch semantics).
            patch = {"status": {"headService": None, **desired}}
            try:
                await self._kube.merge_patch(path, patch)
            except kube.ApiError as exc:
                if exc.status == 404:  # deleted meanwhile
                    return
                raise
            before = _ready(status)
            if before is None or before.get("status") != desired["conditions"][0]["status"]:
                await self.event(view, desired["conditions"][0])

    async def event(self, view: ConfigView, condition: Mapping[str, Any]) -> None:
        """Record a change of validity as an Event on the SyncConfig."""
        involved = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": view.name,
            "uid": view.uid,
        }
        body = event_body(
            view.namespace,
            involved,
            "Normal" if condition["status"] == "True" else "Warning",
            condition["reason"],
            str(condition["message"]),
        )
        await record_event(self._kube, body)

    async def _ensure_head_objects(self, view: ConfigView) -> None:
        # Create only, never read: the operator needs no permission to read Secrets. A
        # Secret already there is this SyncConfig's from before (its name carries the uid)
        # and keeps its token.
        token = secrets.token_urlsafe(32)
        await self._create(kube.namespaced(SECRETS, view.namespace), head_secret(view, token))
        service_path = kube.namespaced(SERVICES, view.namespace, names.head_service_name(view.name))
        wanted = head_service(view)
        existing = await self._kube.get_or_none(service_path)
        if existing is None:
            await self._create(kube.namespaced(SERVICES, view.namespace), wanted)
        elif _owned_by_predecessor(existing, view):
            # Left by a SyncConfig of this name deleted before: its owner is gone, so the
            # garbage collector removes it anyway; this one needs its own now.
            await self._kube.delete(service_path, precondition_uid=existing["metadata"]["uid"])
            await self._create(kube.namespaced(SERVICES, view.namespace), wanted)
        elif not _owned_by(existing, view):
            log.error(
                "Service %s/%s exists and is not this SyncConfig's: workers cannot reach the head",
                view.namespace,
                wanted["metadata"]["name"],
            )
        elif _service_drifted(existing, wanted):
            await self._kube.merge_patch(
                service_path, {"spec": {k: wanted["spec"][k] for k in ("selector", "ports")}}
            )

    async def _remove_head_objects(self, view: ConfigView) -> None:
        """A SyncConfig that no longer syncs to the head node keeps no head Service. Its
        token Secret stays, owned by it, until it is deleted (it would serve again if the
        uploadDir went away)."""
        path = kube.namespaced(SERVICES, view.namespace, names.head_service_name(view.name))
        existing = await self._kube.get_or_none(path)
        if existing is not None and _owned_by(existing, view):
            await self._kube.delete(path, precondition_uid=existing["metadata"]["uid"])

    async def _create(self, path: str, body: JsonDict) -> None:
        try:
            await self._kube.create(path, body)
        except kube.ApiError as exc:
            if exc.status != 409:  # created meanwhile (a previous leader): fine
                raise


def _owned_by(obj: Mapping[str, Any], view: ConfigView) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == view.uid for ref in refs)


def _owned_by_predecessor(obj: Mapping[str, Any], view: ConfigView) -> bool:
    """Whether ``obj``'s controller is a SyncConfig of this name other than ``view``'s:
    names are unique, so that one has been deleted."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        ref.get("controller")
        and ref.get("kind") == names.KIND
        and str(ref.get("apiVersion", "")).startswith(f"{names.GROUP}/")
        and ref.get("name") == view.name
        and ref.get("uid") != view.uid
        for ref in refs
    )


def _service_drifted(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    spec = existing.get("spec") or {}
    ports = [
        {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}
        for p in spec.get("ports") or []
    ]
    return bool(
        spec.get("selector") != wanted["spec"]["selector"] or ports != wanted["spec"]["ports"]
    )


def _same(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    keys = set(desired) | {"headService"}
    return all(desired.get(k) == current.get(k) for k in keys)
