"""The controller's state: the SyncConfig index's readiness, leadership and reconciling.

Every replica fills the index (its webhooks answer from it); only the leader writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from trialsync_operator import kube
from trialsync_operator.reconcile.leader import LeaderElector
from trialsync_operator.reconcile.missed import MissedInjections
from trialsync_operator.reconcile.pod_status import PodStatus
from trialsync_operator.reconcile.reconciler import SYNCCONFIGS, Reconciler
from trialsync_operator.settings import Settings
from trialsync_operator.syncconfig import view_of

log = logging.getLogger(__name__)

#: The leader re-reconciles every SyncConfig this often, catching anything an event missed.
RESYNC_INTERVAL = 300.0
#: A SyncConfig waiting for something no watch here reports (its credentials Secret to be
#: created, the pods that use its head-node service to finish) is checked this often.
RECHECK_INTERVAL = 5.0


class Controller:
    def __init__(self, settings: Settings, client: kube.Kube) -> None:
        self.settings = settings
        self.kube = client
        self.reconciler = Reconciler(client)
        self.elector: LeaderElector | None = None
        #: The leader's search for opted-in pods without a sidecar (set by the app).
        self.missed: MissedInjections | None = None
        #: The pods' sync status (the leader runs it; fed every SyncConfig reconciled).
        self.pod_status = PodStatus(client, settings.namespaces, settings.pod_status_port)
        #: Set once the index holds every SyncConfig: no admission is answered before.
        self.index_ready = asyncio.Event()
        self._rechecks: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- the index -----------------------------------------------------------------------

    def index_populated(self) -> None:
        if not self.index_ready.is_set():
            log.info("SyncConfig index populated; webhooks answer")
            self.index_ready.set()

    async def wait_for_empty_index(self) -> None:
        """With no SyncConfig at all, no watch event ever says the index is complete:
        ask the API once whether there is any."""
        while not self.index_ready.is_set():
            try:
                if not await self._any_syncconfig():
                    self.index_populated()
                    return
            except (kube.ApiError, OSError, TimeoutError) as exc:
                log.warning("cannot list SyncConfigs yet: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.index_ready.wait(), 5.0)

    async def _any_syncconfig(self) -> bool:
        for path in self._collections():
            listing = await self.kube.get(path, params={"limit": "1"})
            if listing.get("items"):
                return True
        return False

    def _collections(self) -> list[str]:
        """The API paths of the SyncConfigs this operator watches."""
        if not self.settings.namespaces:
            return [kube.cluster(SYNCCONFIGS)]
        return [kube.namespaced(SYNCCONFIGS, ns) for ns in self.settings.namespaces]

    # -- leadership ----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def lead(self) -> None:
        """While this replica leads: reconcile everything now and every RESYNC_INTERVAL."""
        await self.index_ready.wait()
        while True:
            try:
                await self.reconcile_all()
            except (kube.ApiError, OSError, TimeoutError) as exc:
                log.error("resync failed: %s", exc)
            await asyncio.sleep(RESYNC_INTERVAL)

    async def reconcile_all(self) -> None:
        self.reconciler.forget_known()
        seen: list[tuple[str, str]] = []
        listed_at = self.pod_status.mark()
        for path in self._collections():
            listing = await self.kube.get(path)
            for item in listing.get("items") or []:
                await self.reconcile(item)
                seen.append((item["metadata"]["namespace"], item["metadata"]["name"]))
        self.pod_status.retain(seen, listed_at)

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """Reconcile one SyncConfig; an API error is logged and left to the next event or
        resync (a namespace being deleted refuses new objects, for one)."""
        view = view_of(body, self.settings.sidecar)
        self.pod_status.observe(body)
        finalizers = [str(f) for f in (body.get("metadata") or {}).get("finalizers") or []]
        try:
            again = await self.reconciler.reconcile(view, body.get("status") or {}, finalizers)
        except (kube.ApiError, OSError, TimeoutError) as exc:
            log.warning(
                "reconcile of %s/%s failed; retried in %.0f s: %s",
                view.namespace,
                view.name,
                RECHECK_INTERVAL,
                exc,
            )
            again = True
        if again:
            self._recheck_later(view.namespace, view.name)
        if self.missed is not None and not view.terminating:
            self.missed.status_seen(body.get("status") or {})

    def _recheck_later(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._rechecks:
            task = asyncio.get_running_loop().create_task(self._recheck(namespace, name))
            self._rechecks[key] = task

    async def _recheck(self, namespace: str, name: str) -> None:
        """Reconcile one SyncConfig again, as it is then (listed by name: the operator
        lists and watches SyncConfigs, and gets none by name)."""
        await asyncio.sleep(RECHECK_INTERVAL)
        del self._rechecks[(namespace, name)]
        if not self.is_leader:
            return
        try:
            listing = await self.kube.get(
                kube.namespaced(SYNCCONFIGS, namespace),
                params={"fieldSelector": f"metadata.name={name}"},
            )
        except (kube.ApiError, OSError, TimeoutError) as exc:
            log.warning("recheck of %s/%s failed: %s", namespace, name, exc)
            self._recheck_later(namespace, name)
            return
        for item in listing.get("items") or []:
            await self.reconcile(item)
