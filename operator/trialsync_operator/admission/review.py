"""The review of one pod around the pure injection: readiness, watched namespaces, and a
refusal, or an admission unmodified with a warning and an Event (``--on-config-error
admit``). It knows nothing of kopf: the adapter turns ``Denied`` into kopf's answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from trialsync_operator import kube, names
from trialsync_operator.admission import injection, patch
from trialsync_operator.events import event_body, record_event
from trialsync_operator.metrics import Metrics
from trialsync_operator.settings import Settings

log = logging.getLogger(__name__)

#: The reason of the Event recorded when a pod is admitted without its sidecar.
SIDECAR_NOT_INJECTED = "SidecarNotInjected"

#: The reasons a pod gets no sidecar, as the metrics count them, besides the injection's.
REASON_NOT_OPTED_IN = "not_opted_in"
REASON_OPERATOR_STARTING = "operator_starting"
REASON_NAMESPACE_NOT_WATCHED = "namespace_not_watched"
REASON_INTERNAL_ERROR = "internal_error"
#: Why a pod is admitted without a sidecar (``trialsync_injection_skip_total``).
SKIP_REASONS = (
    REASON_NOT_OPTED_IN,
    injection.REASON_ALREADY_INJECTED,
    injection.REASON_SYNCING_DISABLED,
    # --on-config-error admit: these pods are admitted without a sidecar.
    injection.REASON_CONFIG_MISSING,
    injection.REASON_CONFIG_INVALID,
    injection.REASON_INVALID_ANNOTATIONS,
    injection.REASON_INVALID_POD,
)
#: Why a pod is refused (``trialsync_injection_failure_total``).
FAILURE_REASONS = (
    REASON_OPERATOR_STARTING,
    REASON_NAMESPACE_NOT_WATCHED,
    injection.REASON_CONFIG_MISSING,
    injection.REASON_CONFIG_INVALID,
    injection.REASON_INVALID_ANNOTATIONS,
    injection.REASON_INVALID_POD,
    REASON_INTERNAL_ERROR,
)


def operator_metrics() -> Metrics:
    """The operator's metrics, the injection's reasons exported at 0 from the start."""
    return Metrics(skip_reasons=SKIP_REASONS, failure_reasons=FAILURE_REASONS)


class Denied(Exception):
    """The pod is refused; ``code`` is the HTTP status of the admission's answer, ``reason``
    the metrics' (one of ``FAILURE_REASONS``)."""

    def __init__(self, message: str, code: int, reason: str = REASON_INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclasses.dataclass
class Decision:
    """An admitted pod: the RFC 6902 operations to apply (none: unmodified) and the
    warnings for the client."""

    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Why no sidecar was injected (one of ``SKIP_REASONS``); "" when it was.
    skipped: str = ""


class PodAdmission:
    """Reviews pods for ``settings``; ``index_ready`` is set once the SyncConfig index is
    complete, and no pod is answered before (refused with 503, so the client retries)."""

    def __init__(
        self,
        settings: Settings,
        client: kube.Kube,
        index_ready: asyncio.Event,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.kube = client
        self.index_ready = index_ready
        self.metrics = metrics or operator_metrics()
        self._background: set[asyncio.Task[None]] = set()

    def review(self, body: Mapping[str, Any], dryrun: bool, lookup: injection.Lookup) -> Decision:
        """Inject the sidecar into a pod, or refuse it (``Denied``) saying why; count it
        (a request, and one of success, skip or failure with its reason)."""
        metrics = self.metrics
        metrics.injection_requests.inc()
        try:
            decision = self._review(body, dryrun, lookup)
        except Denied as exc:
            metrics.injection_failure.labels(exc.reason).inc()
            raise
        except Exception:
            metrics.injection_failure.labels(REASON_INTERNAL_ERROR).inc()
            raise
        if decision.skipped:
            metrics.injection_skip.labels(decision.skipped).inc()
        else:
            metrics.injection_success.inc()
        return decision

    def _review(self, body: Mapping[str, Any], dryrun: bool, lookup: injection.Lookup) -> Decision:
        if not self.index_ready.is_set():
            raise Denied(
                "the trialsync operator is starting and has not read every SyncConfig yet; "
                "retry in a few seconds",
                code=503,
                reason=REASON_OPERATOR_STARTING,
            )
        meta = _mapping(body.get("metadata"))
        if _mapping(meta.get("labels")).get(names.INJECT_LABEL) != "true":
            # The webhook's objectSelector sends only opted-in pods; one that reaches it
            # anyway (a configuration edited by hand) is left alone.
            return Decision(skipped=REASON_NOT_OPTED_IN)
        namespace = str(meta.get("namespace") or "")
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            raise Denied(
                f"the trialsync operator watches only namespaces "
                f"{', '.join(self.settings.namespaces)}, not {namespace}",
                code=400,
                reason=REASON_NAMESPACE_NOT_WATCHED,
            )
        try:
            result = injection.plan(body, namespace, lookup, self.settings.defaults)
        except injection.Refusal as exc:
            if self.settings.on_config_error != "admit":
                raise Denied(f"trialsync: {exc}", code=400, reason=exc.reason) from None
            message = f"trialsync: no sidecar injected: {exc}"
            if not dryrun:
                self._spawn(self._pod_event(body, namespace, message))
            return Decision(warnings=[message], skipped=exc.reason)
        warnings = [f"trialsync: {w}" for w in result.warnings]
        if result.patch is None:
            return Decision(warnings=warnings, skipped=result.skipped)
        return Decision(ops=patch.json_patch(body, result.patch), warnings=warnings)

    async def settled(self) -> None:
        """Wait for the Events being written in the background."""
        await asyncio.gather(*self._background)

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
