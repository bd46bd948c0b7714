"""SyncConfig reconciliation: status conditions, Events, and the head-node Secret and Service.

Level-triggered and idempotent: ``reconcile`` compares what is with what should be and
writes only the difference, so it can run for every watch event and again for every
object when this replica becomes the leader. Only the leader runs it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from trialsync import contract
from trialsync.contract import Mode
from trialsync_operator import kube, names
from trialsync_operator.events import event_body, now, record_event
from trialsync_operator.reconcile import in_use
from trialsync_operator.syncconfig import REASON_INVALID, REASON_VALID, ConfigView
from trialsync_operator.tls import certificates

log = logging.getLogger(__name__)

SYNCCONFIGS = f"apis/{names.API_VERSION}/{names.PLURAL}"
SECRETS = "api/v1/secrets"
SERVICES = "api/v1/services"
PODS = "api/v1/pods"
#: Conditions besides Ready, and reasons.
RETAINED = "HeadServiceRetained"
#: The conditions this module writes; others in the status are kept as they are.
OWN_CONDITIONS = frozenset({"Ready", RETAINED})
REASON_PODS_IN_USE = "PodsInUse"
REASON_TERMINATING = "Terminating"
REASON_SECRET_MISSING = "SecretMissing"
JsonDict = dict[str, Any]
#: The head's certificate lives as long as its SyncConfig's incarnation (the Secret is
#: never rewritten): as long as the CA that signs it, ten years.
HEAD_CERT_VALIDITY = certificates.CA_VALIDITY


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the reconciler learnt from the cluster about one SyncConfig, beyond its spec."""

    #: spec.credentials.secretRef names a Secret that does not exist.
    secret_missing: bool = False
    #: Live pods that use its head-node service (read only while the finalizer is needed
    #: for them: the SyncConfig is deleted, or no longer syncs to the head node).
    head_users: tuple[str, ...] = ()


def desired_status(
    view: ConfigView, current: Mapping[str, Any], now: str, facts: Facts = Facts()
) -> JsonDict:
    """The status a SyncConfig should have (kstatus: ``observedGeneration``, ``Ready``,
    and ``HeadServiceRetained`` while pods keep a head-node service it no longer wants).

    A condition's ``lastTransitionTime`` changes only when its status does.
    """
    status, reason, message = _readiness(view, facts)
    conditions = [_condition("Ready", status, reason, message, view, current, now)]
    retained = facts.head_users and not _wants_head(view)
    if retained:
        users = facts.head_users
        conditions.append(
            _condition(
                RETAINED,
                "True",
                REASON_PODS_IN_USE,
                f"{len(users)} pod(s) still use the head-node Service "
                f"{names.head_service_name(view.name)} and its token Secret "
                f"({in_use.shown(users)}): both are kept until the last has finished",
                view,
                current,
                now,
            )
        )
    # Conditions of other writers (reconcile.missed's MissedInjections, pod_status's
    # Synced) are kept as they are: the status is patched with the whole list, so merging
    # is by condition type here.
    conditions.extend(
        dict(c)
        for c in current.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") not in OWN_CONDITIONS
    )
    desired: JsonDict = {
        "observedGeneration": view.generation,
        "destination": view.destination,
        "conditions": conditions,
    }
    if _wants_head(view) or retained:
        desired["headService"] = names.head_service_name(view.name)
    return desired


def _readiness(view: ConfigView, facts: Facts) -> tuple[str, str, str]:
    """The Ready condition: what a pod that names the SyncConfig now would meet."""
    if view.terminating:
        waiting = (
            f"; kept, with its head-node Service and token Secret, until the "
            f"{len(facts.head_users)} pod(s) that use them have finished "
            f"({in_use.shown(facts.head_users)})"
            if facts.head_users
            else ""
        )
        return "False", REASON_TERMINATING, f"the SyncConfig is being deleted{waiting}"
    if not view.valid:
        return "False", view.reason or REASON_INVALID, view.message
    if facts.secret_missing:
        return (
            "False",
            REASON_SECRET_MISSING,
            f"Secret {view.namespace}/{view.credentials_secret} (spec.credentials.secretRef) "
            "does not exist: a pod that names this SyncConfig waits in ContainerCreating "
            "until it does; create it, or fix the name",
        )
    return "True", REASON_VALID, _ready_message(view)


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    view: ConfigView,
    current: Mapping[str, Any],
    now: str,
) -> JsonDict:
    previous = _find(current, type_)
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": view.generation,
        "lastTransitionTime": (
            previous["lastTransitionTime"]
            if previous and previous.get("status") == status and previous.get("lastTransitionTime")
            else now
        ),
    }


def _wants_head(view: ConfigView) -> bool:
    """Whether the spec itself wants a head-node service now."""
    return view.valid and view.mode is Mode.HEAD and not view.terminating


def _ready_message(view: ConfigView) -> str:
    if view.mode is Mode.UPLOAD:
        return f"pods that opt in sync to {view.upload_dir}"
    if view.mode is Mode.HEAD:
        return (
            "pods that opt in sync to the head node through Service "
            f"{names.head_service_name(view.name)}"
        )
    return "syncing is disabled (syncer: none, no uploadDir): pods get no sidecar"


def _find(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return None


def head_secret(view: ConfigView, token: str, now: datetime.datetime | None = None) -> JsonDict:
    """The head-node Secret: the token every sidecar of the SyncConfig holds, and the
    head's TLS identity, a serving certificate for the head Service's DNS names (``tls.crt``,
    ``tls.key``) and the CA certificate that signed it (``ca.crt``), which workers trust.

    The CA's key is not kept: nothing else is ever signed by it, so ``ca.crt`` vouches for
    this one certificate, and only a holder of ``tls.key`` can be the head."""
    material = certificates.new_material(
        names.head_hosts(view.name, view.namespace),
        HEAD_CERT_VALIDITY,
        now or datetime.datetime.now(datetime.UTC),
        ca_name="trialsync-head-ca",
    )
    data = {
        names.HEAD_TOKEN_KEY: token.encode(),
        names.HEAD_CERT_KEY: material.cert,
        names.HEAD_KEY_KEY: material.key,
        names.HEAD_CA_KEY: material.ca_bundle,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": names.HEAD_SECRET_TYPE,
        "metadata": {
            "name": names.head_secret_name(view.name, view.uid),
            "labels": _labels(view, "head-node"),
            "ownerReferences": [owner_reference(view)],
        },
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
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
        #: Head-node Secrets known to exist (created, or found there): every watch event
        #: reconciles, and a Secret's key pairs are not worth making again to learn it.
        #: Emptied by ``forget_known``, so a Secret deleted by hand comes back at a resync.
        self._known_secrets: set[tuple[str, str]] = set()

    def forget_known(self) -> None:
        self._known_secrets.clear()

    async def reconcile(
        self, view: ConfigView, status: Mapping[str, Any], finalizers: Sequence[str] = ()
    ) -> bool:
        """Bring one SyncConfig's status, finalizer and children in line with its spec and
        with the pods that use it. True when something it waits for (a Secret to appear,
        pods to finish) is worth checking again soon."""
        facts = await self._facts(view, finalizers)
        if _wants_head(view):
            await self._ensure_head_objects(view)
        elif not facts.head_users and not view.terminating:
            await self._remove_head_objects(view)
        # A deleted SyncConfig's Service and Secret go with it (garbage collector), once the
        # finalizer is gone: nothing to delete here.
        await self._keep_finalizer(view, finalizers, _wants_head(view) or bool(facts.head_users))
        desired = desired_status(view, status, now(), facts)
        if not _same(desired, status):
            path = kube.namespaced(SYNCCONFIGS, view.namespace, view.name) + "/status"
            # headService: null removes a stale one (merge-patch semantics).
            patch = {"status": {"headService": None, **desired}}
            try:
                await self._kube.merge_patch(path, patch)
            except kube.ApiError as exc:
                if exc.status == 404:  # deleted meanwhile
                    return False
                raise
            for condition in desired["conditions"]:
                if condition["type"] not in OWN_CONDITIONS:
                    continue
                before = _find(status, condition["type"])
                changed = before is None or before.get("status") != condition["status"]
                # Ready's every change; another condition's when it becomes True.
                if changed and (condition["type"] == "Ready" or condition["status"] == "True"):
                    await self.event(view, condition)
        return facts.secret_missing or bool(facts.head_users)

    async def _facts(self, view: ConfigView, finalizers: Sequence[str]) -> Facts:
        secret_missing = bool(
            view.valid
            and not view.terminating
            and view.credentials_secret
            and not await self._secret_exists(view.namespace, view.credentials_secret)
        )
        users: tuple[str, ...] = ()
        if in_use.FINALIZER in finalizers and not _wants_head(view):
            listing = await self._kube.get(
                kube.namespaced(PODS, view.namespace),
                params={"labelSelector": f"{names.CONFIG_LABEL}={view.name}"},
            )
            users = in_use.head_users(listing.get("items") or [], view.uid)
        return Facts(secret_missing=secret_missing, head_users=users)

    async def _secret_exists(self, namespace: str, name: str) -> bool:
        """Whether Secret ``namespace/name`` exists, learnt without reading it: a dry-run
        create of that name answers AlreadyExists when it does (the operator may create
        only Secrets of its own type, and reads none). True when the answer says neither."""
        probe = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": names.HEAD_SECRET_TYPE,
            "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        }
        try:
            await self._kube.request(
                "POST", kube.namespaced(SECRETS, namespace), probe, params={"dryRun": "All"}
            )
        except kube.ApiError as exc:
            if exc.status != 409:
                log.warning("cannot tell whether Secret %s/%s exists: %s", namespace, name, exc)
            return True
        return False

    async def _keep_finalizer(
        self, view: ConfigView, finalizers: Sequence[str], wanted: bool
    ) -> None:
        present = in_use.FINALIZER in finalizers
        if wanted == present or (wanted and view.terminating):
            return  # a finalizer cannot be added to an object being deleted
        ops = in_use.add_finalizer(finalizers) if wanted else in_use.remove_finalizer(finalizers)
        try:
            await self._kube.json_patch(
                kube.namespaced(SYNCCONFIGS, view.namespace, view.name), ops
            )
        except kube.ApiError as exc:
            if exc.status not in (404, 409, 422):  # gone, or changed meanwhile: next event
                raise

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
        # and keeps its token and certificate.
        known = (view.namespace, names.head_secret_name(view.name, view.uid))
        if known not in self._known_secrets:
            token = secrets.token_urlsafe(32)
            await self._create(kube.namespaced(SECRETS, view.namespace), head_secret(view, token))
            self._known_secrets.add(known)
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
        head Secret stays, owned by it, until it is deleted (it would serve again if the
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
