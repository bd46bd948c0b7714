"""Missed injections: pods that opted in but run without their sidecar.

Under ``failurePolicy: Ignore`` a labelled pod created while no operator answers (or the
webhook's call failed) is admitted as it is: it trains, and its checkpoints go nowhere.
The leader finds such pods and says so in three places (docs/operator.md, "Missed
injections"):

- a Warning Event ``MissedInjection`` on each pod, once per pod, saying to recreate it;
- the condition ``MissedInjections`` on its SyncConfig: ``True`` with the count and a few
  names, ``False`` when every live opted-in pod has its sidecar;
- the gauge ``trialsync_missed_injections{namespace,syncconfig}``.

A pod counts when it carries the opt-in label, is neither finished nor being deleted,
has no sidecar container, and names a SyncConfig that would inject it now (present,
valid, syncing, not being deleted) with annotations the webhook would accept: recreating
it gives it the sidecar. Pods in namespaces the webhooks never select are left out: the
system namespaces and the operator's own at once, and any other the pods webhook's
``namespaceSelector`` leaves out (a namespace labelled ``trialsync.io/injection=disabled``,
one in the chart's ``webhook.excludeNamespaces``), read from the live
MutatingWebhookConfiguration and the namespace's labels when a scan finds a candidate
there. When either cannot be read, the pod is reported: a false alarm is the safer error.

Cheap at scale: a scan is one LIST of the opted-in pods (label selector, from the
apiserver's watch cache) and one of the SyncConfigs, per watched namespace or once
cluster-wide, and no call per pod; it runs when this replica becomes the leader, every
``SCAN_INTERVAL`` seconds, and ``SETTLE`` seconds after a pod event that may change the
answer (kopf's watch of the opted-in pods, ``pod_event``). A status write happens only
when the condition changes, and merges by condition type: the reconciler keeps
conditions it does not own (``reconciler.desired_status``), and this module writes the
whole list with the SyncConfig's resourceVersion, so a concurrent write makes it retry
instead of dropping the other's condition. A reconciler's write from an older copy may
drop this condition; the controller then calls ``status_seen``, and a scan writes it
again within ``SETTLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from trialsync.contract import Mode
from trialsync_operator import kube, names, selectors
from trialsync_operator.events import EVENTS, event_body, now, record_event
from trialsync_operator.metrics import Metrics
from trialsync_operator.reconcile import in_use
from trialsync_operator.settings import Settings
from trialsync_operator.syncconfig import ConfigView, view_of

log = logging.getLogger(__name__)

PODS = "api/v1/pods"
NAMESPACES = "api/v1/namespaces"
MUTATING = "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
SYNCCONFIGS = f"apis/{names.API_VERSION}/{names.PLURAL}"
#: The SyncConfig's condition, its reasons, and the reason of the Event on a pod.
CONDITION = "MissedInjections"
REASON_FOUND = "PodsWithoutSidecar"
REASON_NONE = "AllInjected"
EVENT_REASON = names.MISSED_INJECTION_REASON
#: Seconds between scans, and from a pod event that may matter to the scan it triggers
#: (a burst of pods costs one scan).
SCAN_INTERVAL = 30.0
SETTLE = 1.0
#: Namespaces the chart's webhooks never select (the operator's own is added).
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
_FINISHED = ("Succeeded", "Failed")
JsonDict = dict[str, Any]
Key = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class MissedPod:
    namespace: str
    name: str
    uid: str
    #: The SyncConfig it names.
    config: str


def opted_in_without_sidecar(pod: Mapping[str, Any]) -> bool:
    """Whether ``pod`` is live, carries the opt-in label and has no sidecar container."""
    meta = _mapping(pod.get("metadata"))
    if _mapping(meta.get("labels")).get(names.INJECT_LABEL) != "true":
        return False
    if meta.get("deletionTimestamp") or _mapping(pod.get("status")).get("phase") in _FINISHED:
        return False
    spec = _mapping(pod.get("spec"))
    containers = [*_list(spec.get("initContainers")), *_list(spec.get("containers"))]
    return not any(c.get("name") == names.SIDECAR_NAME for c in containers)


def missed_pod(
    pod: Mapping[str, Any],
    views: Mapping[Key, ConfigView],
    excluded: Iterable[str] = SYSTEM_NAMESPACES,
    annotations_refused: Callable[[Mapping[str, Any]], bool] = lambda _: False,
) -> MissedPod | None:
    """``pod`` as a missed injection, or None: it has its sidecar, is not opted in, is
    finished, or would get no sidecar if recreated now (its SyncConfig missing, invalid,
    disabled or being deleted, or its own annotations refused), or is in an ``excluded``
    namespace."""
    if not opted_in_without_sidecar(pod):
        return None
    meta = _mapping(pod.get("metadata"))
    namespace, name, uid = (str(meta.get(k) or "") for k in ("namespace", "name", "uid"))
    config = _mapping(meta.get("annotations")).get(names.CONFIG_ANNOTATION)
    if not isinstance(config, str) or not namespace or namespace in excluded:
        return None
    view = views.get((namespace, config))
    if view is None or not view.valid or view.terminating or view.mode is Mode.DISABLED:
        return None
    if annotations_refused(pod):
        return None
    return MissedPod(namespace, name, uid, config)


def condition(
    missed: Sequence[MissedPod], generation: int, previous: Mapping[str, Any] | None, at: str
) -> JsonDict:
    """The ``MissedInjections`` condition of a SyncConfig with ``missed`` pods; its
    ``lastTransitionTime`` changes only when its status does."""
    if missed:
        pods = sorted(p.name for p in missed)
        status, reason = "True", REASON_FOUND
        message = (
            f"{len(pods)} pod(s) opted in but run without the trialsync sidecar, so their "
            f"checkpoints are not synced ({in_use.shown(pods)}): they were admitted while "
            "the injection webhook was not called (the operator down under failurePolicy "
            "Ignore); delete and recreate them to get the sidecar"
        )
    else:
        status, reason = "False", REASON_NONE
        message = "every live pod that opted in with this SyncConfig has its sidecar"
    kept = previous is not None and previous.get("status") == status
    return {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": (
            previous["lastTransitionTime"]
            if kept and previous and previous.get("lastTransitionTime")
            else at
        ),
    }


def merged(conditions: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> list[JsonDict]:
    """``conditions`` with the one of ``new``'s type replaced by ``new`` (or appended)."""
    out = [dict(c) for c in conditions if c.get("type") != new["type"]]
    index = next((i for i, c in enumerate(conditions) if c.get("type") == new["type"]), len(out))
    out.insert(index, dict(new))
    return out


def same_condition(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    if a is None:
        return False
    keys = ("status", "reason", "message", "observedGeneration")
    return all(a.get(k) == b.get(k) for k in keys)


def event_message(pod: MissedPod) -> str:
    return (
        f"pod {pod.namespace}/{pod.name} opted in to trialsync (SyncConfig {pod.config}) "
        "but runs without the sync sidecar: it was admitted while the injection webhook "
        "was not called (the operator was down, under failurePolicy Ignore), and its "
        "checkpoints are not synced. Delete and recreate the pod (a Job's or another "
        "controller's pod: delete it, and its controller makes a new one) to get the sidecar"
    )


class MissedInjections:
    """The leader's search for missed injections (``lead``), fed by kopf's watch of the
    opted-in pods (``pod_event``)."""

    def __init__(
        self,
        client: kube.Kube,
        settings: Settings,
        metrics: Metrics,
        annotations_refused: Callable[[Mapping[str, Any]], bool] = lambda _: False,
        interval: float = SCAN_INTERVAL,
    ) -> None:
        self._kube = client
        self._settings = settings
        self._metrics = metrics
        self._annotations_refused = annotations_refused
        self._interval = interval
        self._excluded = frozenset((*SYSTEM_NAMESPACES, settings.namespace))
        self._wake = asyncio.Event()
        self._leading = False
        #: The uids of the pods an Event was recorded on (by this leader or, read at
        #: leadership, an earlier one): one Event per pod.
        self._reported: set[str] = set()
        #: The missed pods of the last scan, by uid; the gauge's label sets exported.
        self._missed: dict[str, MissedPod] = {}
        self._exported: set[Key] = set()

    # -- kopf's watch --------------------------------------------------------------------

    def pod_event(self, type_: str | None, pod: Mapping[str, Any]) -> None:
        """An event of an opted-in pod: scan soon if it may change the answer (a pod
        without its sidecar not reported yet, or a missed pod gone or finished)."""
        if not self._leading:
            return
        uid = str(_mapping(pod.get("metadata")).get("uid") or "")
        if type_ == "DELETED" or not opted_in_without_sidecar(pod):
            if uid in self._missed:
                self._wake.set()
        elif uid not in self._reported:
            self._wake.set()

    def status_seen(self, status: Mapping[str, Any]) -> None:
        """A SyncConfig's status as the reconciler read it: one without the condition (a
        new SyncConfig, or a write from a stale copy that dropped it) is scanned soon, not
        at the next interval."""
        if self._leading and not any(
            c.get("type") == CONDITION for c in _list(status.get("conditions"))
        ):
            self._wake.set()

    # -- the leader's loop ---------------------------------------------------------------

    async def lead(self) -> None:
        """While this replica leads: scan now, every interval, and after pod events."""
        self._leading = True
        try:
            await self._read_reported()
            while True:
                self._wake.clear()
                await self.scan_safely()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                if self._wake.is_set():
                    await asyncio.sleep(SETTLE)
        finally:
            self._leading = False
            # Only the leader exports the gauge: a standby's would be stale.
            self._metrics.missed_injections.clear()
            self._exported.clear()
            self._missed.clear()

    async def scan_safely(self) -> None:
        try:
            await self.scan()
        except (kube.ApiError, OSError, TimeoutError) as exc:
            self._metrics.missed_injection_scans.labels("error").inc()
            log.warning("scan for missed injections failed; again in %.0f s: %s", SETTLE, exc)
            self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._metrics.missed_injection_scans.labels("error").inc()
            log.exception("scan for missed injections failed")
        else:
            self._metrics.missed_injection_scans.labels("ok").inc()

    async def scan(self) -> None:
        """One scan: list, report new missed pods, write changed conditions, the gauge."""
        configs: list[Mapping[str, Any]] = []
        pods: list[Mapping[str, Any]] = []
        for path in self._paths(SYNCCONFIGS):
            configs.extend((await self._kube.get(path)).get("items") or [])
        selector = {"labelSelector": f"{names.INJECT_LABEL}=true", "resourceVersion": "0"}
        for path in self._paths(PODS):
            pods.extend((await self._kube.get(path, params=selector)).get("items") or [])
        sidecar = self._settings.sidecar
        views = {view.key: view for view in (view_of(body, sidecar) for body in configs)}
        missed: dict[str, MissedPod] = {}
        for body in pods:
            found = missed_pod(body, views, self._excluded, self._annotations_refused)
            if found is not None:
                missed[found.uid] = found
        if missed:
            left_out = await self._left_out({pod.namespace for pod in missed.values()})
            missed = {uid: pod for uid, pod in missed.items() if pod.namespace not in left_out}
        self._missed = missed
        for pod in missed.values():
            if pod.uid not in self._reported:
                await self._report(pod)
        self._reported &= set(missed)  # a pod gone, or given a sidecar, is forgotten
        by_config: dict[Key, list[MissedPod]] = {}
        for pod in missed.values():
            by_config.setdefault((pod.namespace, pod.config), []).append(pod)
        for body in configs:
            meta = _mapping(body.get("metadata"))
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            await self._write_condition(body, by_config.get(key, []))
        self._export(by_config)

    async def _report(self, pod: MissedPod) -> None:
        log.warning(
            "pod runs without its sidecar",
            extra={"namespace": pod.namespace, "pod": pod.name, "syncconfig": pod.config},
        )
        involved = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}
        body = event_body(pod.namespace, involved, "Warning", EVENT_REASON, event_message(pod))
        await record_event(self._kube, body)
        self._reported.add(pod.uid)

    async def _write_condition(self, body: Mapping[str, Any], missed: list[MissedPod]) -> None:
        meta = _mapping(body.get("metadata"))
        current = _list(_mapping(body.get("status")).get("conditions"))
        previous = next((c for c in current if c.get("type") == CONDITION), None)
        generation = int(meta.get("generation") or 0)
        wanted = condition(missed, generation, previous, now())
        if same_condition(previous, wanted):
            return
        path = kube.namespaced(SYNCCONFIGS, str(meta["namespace"]), str(meta["name"])) + "/status"
        patch = {
            # The list is written whole: with the resourceVersion it was read at, so a
            # write of another condition meanwhile fails this one (409), not the other.
            "metadata": {"resourceVersion": meta.get("resourceVersion")},
            "status": {"conditions": merged(current, wanted)},
        }
        try:
            await self._kube.merge_patch(path, patch)
        except kube.ApiError as exc:
            if exc.status not in (404, 409):
                raise
            if exc.status == 409:
                self._wake.set()  # read again and retry soon

    def _export(self, by_config: Mapping[Key, list[MissedPod]]) -> None:
        gauge = self._metrics.missed_injections
        for key, pods in by_config.items():
            gauge.labels(*key).set(len(pods))
        for key in self._exported - set(by_config):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        self._exported = set(by_config)

    async def _read_reported(self) -> None:
        """Learn the pods an earlier leader already reported (their Events, while the
        apiserver keeps them: an hour by default), so that a failover adds none."""
        params = {"fieldSelector": f"reason={EVENT_REASON}", "resourceVersion": "0"}
        try:
            for path in self._paths(EVENTS):
                listing = await self._kube.get(path, params=params)
                for event in listing.get("items") or []:
                    uid = _mapping(event.get("involvedObject")).get("uid")
                    if isinstance(uid, str) and uid:
                        self._reported.add(uid)
        except (kube.ApiError, OSError, TimeoutError) as exc:
            log.warning("cannot read the MissedInjection Events recorded before: %s", exc)

    async def _left_out(self, namespaces: Iterable[str]) -> set[str]:
        """Those of ``namespaces`` the pods webhook's namespaceSelector leaves out; none
        when the webhook configuration cannot be read."""
        try:
            configuration = await self._kube.get(
                kube.cluster(MUTATING, self._settings.mutating_webhook)
            )
        except kube.ApiError as exc:
            log.info("cannot read the webhook's namespaceSelector: %s", exc)
            return set()
        webhooks = _list(configuration.get("webhooks"))
        pods_webhook = next((w for w in webhooks if w.get("name") == names.POD_WEBHOOK), {})
        selector = _mapping(pods_webhook.get("namespaceSelector"))
        if not selector:
            return set()
        left_out = set()
        for namespace in sorted(namespaces):
            try:
                found = await self._kube.get(kube.cluster(NAMESPACES, namespace))
            except kube.ApiError as exc:
                log.info("cannot read the labels of namespace %s: %s", namespace, exc)
                continue
            labels = {
                str(k): str(v)
                for k, v in _mapping(_mapping(found.get("metadata")).get("labels")).items()
            }
            if selectors.namespace_refusal(selector, namespace, labels) is not None:
                left_out.add(namespace)
        return left_out

    def _paths(self, kind_path: str) -> list[str]:
        if not self._settings.namespaces:
            return [kube.cluster(kind_path)]
        return [kube.namespaced(kind_path, ns) for ns in self._settings.namespaces]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
