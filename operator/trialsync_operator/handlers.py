"""The kopf handlers: the SyncConfig index, reconciliation, and both admission webhooks.

Webhook paths (the chart's webhook configurations point at them):
``/validate-syncconfigs`` and ``/mutate-pods``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from trialsync_operator import names
from trialsync_operator.runtime import Runtime
from trialsync_operator.syncconfig import ConfigView, view_of

log = logging.getLogger(__name__)

VALIDATE_PATH = "validate-syncconfigs"
MUTATE_PATH = "mutate-pods"


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    sidecar = runtime.settings.sidecar

    @kopf.index(names.GROUP, names.VERSION, names.PLURAL, id="syncconfigs", registry=registry)
    async def syncconfigs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], ConfigView]:
        # Validated once per change, so an admission is a dictionary lookup.
        view = view_of(body, sidecar)
        return {view.key: view}

    @kopf.on.event(names.GROUP, names.VERSION, names.PLURAL, id="reconcile", registry=registry)
    async def reconcile_syncconfig(body: kopf.Body, type: str | None, **_: Any) -> None:
        # kopf calls non-index handlers only once every index is populated.
        runtime.index_populated()
        if type == "DELETED" or not runtime.is_leader:
            return
        await runtime.reconcile(body)

    @kopf.on.validate(
        names.GROUP,
        names.VERSION,
        names.PLURAL,
        id=VALIDATE_PATH,
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    async def validate_syncconfig(body: kopf.Body, **_: Any) -> None:
        # async: kopf runs it on the loop, no thread hop (it does no I/O)
        view = view_of(body, sidecar)
        if not view.valid:
            raise kopf.AdmissionError(view.message, code=422)

    @kopf.on.mutate("", "v1", "pods", id=MUTATE_PATH, operations=["CREATE"], registry=registry)
    async def mutate_pod(body: kopf.Body, warnings: list[str], dryrun: bool, **kwargs: Any) -> None:
        index: kopf.Index[tuple[str, str], ConfigView] = kwargs["syncconfigs"]
        runtime.admit_pod(body, warnings, dryrun, lambda ns, name: _first(index, (ns, name)))

    return registry


def _first(
    index: kopf.Index[tuple[str, str], ConfigView], key: tuple[str, str]
) -> ConfigView | None:
    store = index.get(key)
    return next(iter(store), None) if store else None
