"""The kopf handlers: the SyncConfig index, reconciliation, and both admission webhooks.

Webhook paths (the chart's webhook configurations point at them):
``/validate-syncconfigs`` and ``/mutate-pods``. Each handler only translates between
kopf and the operator's own parts (``reconcile.controller``, ``admission.review``).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from trialsync_operator import names
from trialsync_operator.admission.envelope import Endpoint
from trialsync_operator.admission.review import Denied, PodAdmission
from trialsync_operator.kopf_adapter.webhook_server import respond_with_patch
from trialsync_operator.reconcile.controller import Controller
from trialsync_operator.syncconfig import ConfigView, view_of

log = logging.getLogger(__name__)

VALIDATE_PATH = "validate-syncconfigs"
MUTATE_PATH = "mutate-pods"
#: The handler of the opted-in pods' events (for missed injections).
POD_EVENTS = "opted-in-pods"
#: What each path reviews (the chart's rules): the server refuses any other body with 400.
ENDPOINTS = {
    VALIDATE_PATH: Endpoint(
        names.GROUP, names.VERSION, names.PLURAL, frozenset({"CREATE", "UPDATE"})
    ),
    MUTATE_PATH: Endpoint("", "v1", "pods", frozenset({"CREATE"})),
}


def build_registry(controller: Controller, admission: PodAdmission) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    sidecar = controller.settings.sidecar

    @kopf.index(names.GROUP, names.VERSION, names.PLURAL, id="syncconfigs", registry=registry)
    async def syncconfigs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], ConfigView]:
        # Validated once per change, so an admission is a dictionary lookup.
        view = view_of(body, sidecar)
        return {view.key: view}

    @kopf.on.event(names.GROUP, names.VERSION, names.PLURAL, id="reconcile", registry=registry)
    async def reconcile_syncconfig(body: kopf.Body, type: str | None, **_: Any) -> None:
        # kopf calls non-index handlers only once every index is populated.
        controller.index_populated()
        if type == "DELETED" or not controller.is_leader:
            return
        await controller.reconcile(body)

    @kopf.on.event("", "v1", "pods", id=POD_EVENTS, registry=registry)
    async def opted_in_pod(body: kopf.Body, type: str | None, **_: Any) -> None:
        # Only opted-in pods are watched (runner: a server-side label selector).
        if controller.missed is not None:
            controller.missed.pod_event(type, body)

    @kopf.on.validate(
        names.GROUP,
        names.VERSION,
        names.PLURAL,
        id=VALIDATE_PATH,
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    async def validate_syncconfig(body: kopf.Body, **kwargs: Any) -> None:
        # async: kopf runs it on the loop, no thread hop (it does no I/O)
        old: kopf.Body | None = kwargs.get("old")
        if old is not None and old.get("spec") == body.get("spec"):
            # Metadata only (the operator's finalizer, labels): a SyncConfig that a newer
            # operator finds invalid must still be deletable.
            return
        view = view_of(body, sidecar)
        if not view.valid:
            raise kopf.AdmissionError(view.message, code=422)

    @kopf.on.mutate("", "v1", "pods", id=MUTATE_PATH, operations=["CREATE"], registry=registry)
    async def mutate_pod(body: kopf.Body, warnings: list[str], dryrun: bool, **kwargs: Any) -> None:
        index: kopf.Index[tuple[str, str], ConfigView] = kwargs["syncconfigs"]
        try:
            decision = admission.review(body, dryrun, lambda ns, name: _first(index, (ns, name)))
        except Denied as exc:
            raise kopf.AdmissionError(str(exc), code=exc.code) from None
        warnings.extend(decision.warnings)
        if decision.ops:
            respond_with_patch(decision.ops)

    return registry


def _first(
    index: kopf.Index[tuple[str, str], ConfigView], key: tuple[str, str]
) -> ConfigView | None:
    store = index.get(key)
    return next(iter(store), None) if store else None
