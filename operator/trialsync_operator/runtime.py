"""What the running operator holds: settings, clients, leadership, readiness.

kopf hands this object to no one; the handlers close over it (see ``handlers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import kopf

from trialsync_operator import injection, kube
from trialsync_operator.leader import LeaderElector
from trialsync_operator.reconcile import SYNCCONFIGS, Reconciler, event_body, record_event
from trialsync_operator.settings import Settings
from trialsync_operator.syncconfig import view_of
from trialsync_operator.tls import ServingContext
from trialsync_operator.webhook_server import respond_with_patch

log = logging.getLogger(__name__)

#: The leader re-reconciles every SyncConfig this often, catching anything an event missed.
RESYNC_INTERVAL = 300.0
#: The reason of the Event recorded when a pod is admitted without its sidecar.
SIDECAR_NOT_INJECTED = "SidecarNotInjected"


class Runtime:
    def __init__(self, settings: Settings, client: kube.Kube) -> None:
        self.settings = settings
        self.kube = client
        self.reconciler = Reconciler(client)
        self.serving = ServingContext(settings.cert_dir)
        self.elector: LeaderElector | None = None
        self.index_ready = asyncio.Event()
        self.webhook_listening: Callable[[], bool] = lambda: False
        self._background: set[asyncio.Task[None]] = set()

    # -- readiness -----------------------------------------------------------------------

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

    def ready(self) -> bool:
        return (
            self.index_ready.is_set() and self.serving.ready.is_set() and self.webhook_listening()
        )

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    # -- leadership ----------------------------------------------------------------------

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
        for path in self._collections():
            listing = await self.kube.get(path)
            for item in listing.get("items") or []:
                await self.reconcile(item)

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """Reconcile one SyncConfig; an API error is logged and left to the next event or
        resync (a namespace being deleted refuses new objects, for one)."""
        view = view_of(body, self.settings.sidecar)
        try:
            await self.reconciler.reconcile(view, body.get("status") or {})
        except (kube.ApiError, OSError, TimeoutError) as exc:
            log.warning(
                "reconcile of %s/%s failed; retried at the next change or resync: %s",
                view.namespace,
                view.name,
                exc,
            )

    # -- admission -----------------------------------------------------------------------

    def admit_pod(
        self,
        body: Mapping[str, Any],
        warnings: list[str],
        dryrun: bool,
        lookup: injection.Lookup,
    ) -> None:
        """Inject the sidecar into a pod, or refuse it (kopf.AdmissionError) saying why."""
        if not self.index_ready.is_set():
            raise kopf.AdmissionError(
                "the trialsync operator is starting and has not read every SyncConfig yet; "
                "retry in a few seconds",
                code=503,
            )
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            raise kopf.AdmissionError(
                f"the trialsync operator watches only namespaces "
                f"{', '.join(self.settings.namespaces)}, not {namespace}",
                code=400,
            )
        try:
            result = injection.plan(body, namespace, lookup, self.settings.defaults)
        except injection.Refusal as exc:
            if self.settings.on_config_error != "admit":
                raise kopf.AdmissionError(f"trialsync: {exc}", code=400) from None
            message = f"trialsync: no sidecar injected: {exc}"
            warnings.append(message)
            if not dryrun:
                self._spawn(self._pod_event(body, namespace, message))
            return
        warnings.extend(f"trialsync: {w}" for w in result.warnings)
        if result.patch is not None:
            respond_with_patch(injection.json_patch(body, result.patch))

    async def _pod_event(self, pod: Mapping[str, Any], namespace: str, message: str) -> None:
        """A Warning on the pod's owner (a new pod has no name yet when a controller made it)."""
        involved = _pod_or_owner(pod)
        if involved is None:
            log.warning("no sidecar injected in a pod with no name or owner: %s", message)
            return
        body = event_body(namespace, involved, "Warning", SIDECAR_NOT_INJECTED, message)
        await record_event(self.kube, body)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _pod_or_owner(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What an Event about a new pod is recorded on: its controller (a Job, a ReplicaSet...)
    when it has one, since a pod a controller makes has no name yet; else the pod by name;
    None for a pod with neither."""
    meta = _mapping(pod.get("metadata"))
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping)]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is not None:
        return {k: owner.get(k) for k in ("apiVersion", "kind", "name", "uid")}
    name = meta.get("name")
    if isinstance(name, str) and name:
        return {"apiVersion": "v1", "kind": "Pod", "name": name}
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
