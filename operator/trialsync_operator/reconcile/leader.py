"""Leader election on a coordination.k8s.io Lease: one replica reconciles, all serve webhooks.

kopf's own peering pauses a standby replica's watches, which would freeze the SyncConfig
index its webhook answers from; so every replica runs kopf standalone and this elects
the one that writes (status, Events, head-node Secret and Service, the TLS Secret).

As client-go does, expiry is judged by the local clock from when this replica last saw
the Lease change, not from the holder's timestamps, so clock skew between nodes cannot
make two leaders. A leader that cannot renew within ``renew_deadline`` steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from trialsync_operator import kube

log = logging.getLogger(__name__)

LEASES = "apis/coordination.k8s.io/v1/leases"


@dataclasses.dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    """Campaigns for ``name`` in ``namespace`` as ``identity`` until ``run`` is cancelled.

    ``on_lead`` runs (as a task) each time leadership is gained; it is cancelled when
    leadership is lost. ``is_leader`` is what the reconciler checks before each write.
    """

    def __init__(
        self,
        client: kube.Kube,
        namespace: str,
        name: str,
        identity: str,
        on_lead: Callable[[], Coroutine[Any, Any, None]],
        timing: Timing = Timing(),
    ) -> None:
        self._kube = client
        self._path = kube.namespaced(LEASES, namespace, name)
        self._collection = kube.namespaced(LEASES, namespace)
        self.name = f"{namespace}/{name}"
        self.identity = identity
        self._on_lead = on_lead
        self._timing = timing
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._leading: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        loop = asyncio.get_running_loop()
        return self._leading is not None and (
            loop.time() - self._renewed_at < self._timing.renew_deadline
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    held = await self._try_acquire_or_renew()
                except (kube.ApiError, OSError, TimeoutError) as exc:
                    log.warning("leader election: %s", exc)
                    held = False
                if held:
                    self._renewed_at = loop.time()
                    if self._leading is None:
                        log.info("became the leader", extra={"lease": self.name})
                        self._leading = loop.create_task(self._on_lead())
                elif self._leading is not None and not self.is_leader:
                    await self._step_down()
                await asyncio.sleep(self._timing.retry_period)
        finally:
            if self._leading is not None:
                await self._step_down()
                with contextlib.suppress(kube.ApiError, OSError, TimeoutError):
                    await self._release()

    async def _step_down(self) -> None:
        log.warning("stopped leading", extra={"lease": self.name})
        task, self._leading = self._leading, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _try_acquire_or_renew(self) -> bool:
        loop = asyncio.get_running_loop()
        now = _micro_time()
        lease = await self._kube.get_or_none(self._path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._path.rsplit("/", 1)[1]},
                "spec": self._spec(now, acquired=now, transitions=0),
            }
            try:
                await self._kube.create(self._collection, body)
            except kube.ApiError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, loop.time()
        duration = float(spec.get("leaseDurationSeconds") or self._timing.lease_duration)
        expired = loop.time() - self._observed_at >= duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
            acquired = now
        else:
            acquired = str(spec.get("acquireTime") or now)
        lease["spec"] = self._spec(now, acquired=acquired, transitions=transitions)
        try:
            # A replace carries the resourceVersion read above: it fails (409) if another
            # replica wrote the Lease in between, so two cannot take it at once.
            updated = await self._kube.replace(self._path, lease)
        except kube.ApiError as exc:
            if exc.status == 409:
                return False
            raise
        new_spec = updated.get("spec") or {}
        self._observed = (self.identity, str(new_spec.get("renewTime") or ""))
        self._observed_at = loop.time()
        return True

    def _spec(self, now: str, acquired: str, transitions: int) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._timing.lease_duration),
            "acquireTime": acquired,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _release(self) -> None:
        """Hand the Lease back at shutdown so a standby takes over at once."""
        lease = await self._kube.get_or_none(self._path)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = None
        lease["spec"]["leaseDurationSeconds"] = 1
        await self._kube.replace(self._path, lease)
        log.info("released the leadership", extra={"lease": self.name})


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
