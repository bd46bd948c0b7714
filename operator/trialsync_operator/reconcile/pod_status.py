"""How a SyncConfig's pods are syncing: the leader polls each pod's sidecar and counts.

Every sidecar answers ``GET /status`` on its status port (``trialsync._process.sync_status``:
synced, lagging, failing or starting, its newest published checkpoint, its oldest unsynced
change). The leader knows the opted-in pods from one list and watch of pods by the opt-in
label (never a GET per pod), polls the sidecars of each SyncConfig at their pod IPs once per
``syncPeriod`` (at most ``CONCURRENCY`` at once, each within ``TIMEOUT``; one that does not
answer counts as ``unknown``), and writes the SyncConfig's ``status.pods``,
``status.newestCheckpoint``, ``status.oldestUnsynced`` and its ``Synced`` condition only
when they changed: one status patch per SyncConfig per period at most, and none while
nothing changes. docs/architecture.md, "Pod sync status", has the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from trialsync import contract
from trialsync_operator import kube, names
from trialsync_operator.reconcile import in_use

log = logging.getLogger(__name__)

PODS = "api/v1/pods"
SYNCCONFIGS = f"apis/{names.API_VERSION}/{names.PLURAL}"
#: The condition this module owns; the reconciler keeps it as it is.
SYNCED = "Synced"
#: The states a sidecar reports, and ``unknown`` for one that did not answer.
STATES = ("synced", "lagging", "failing", "starting")
UNKNOWN = "unknown"
#: Sidecars polled at once (all SyncConfigs together), and each poll's bound in seconds.
CONCURRENCY = 64
TIMEOUT = 2.0
#: No SyncConfig's pods are polled more often than this, whatever its syncPeriod.
MIN_INTERVAL = 5.0
#: The largest /status answer read.
MAX_BODY = 64 * 1024
#: Seconds a round waits for the reconciler to write a new generation's status first.
RECONCILED_WAIT = 10
#: Pods listed per page; the watch's own timeout (the apiserver ends it, we resume).
PAGE = 500
WATCH_SECONDS = 300
_FINISHED = frozenset({"Succeeded", "Failed"})
JsonDict = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Pod:
    """What the watch keeps of an opted-in pod: little, so 10,000 pods cost little."""

    namespace: str
    name: str
    config: str
    ip: str | None
    finished: bool


@dataclasses.dataclass
class Report:
    """One sidecar's answer, as far as the SyncConfig's status goes."""

    state: str
    newest: tuple[str, float] | None = None  # (path, published at)
    oldest: tuple[str, float] | None = None  # (path, since)
    reason: str | None = None


@dataclasses.dataclass
class Tracked:
    """A SyncConfig as the leader last saw it."""

    namespace: str
    name: str
    period: float
    upload_dir: str | None
    status: Mapping[str, Any]
    resource_version: str
    generation: int = 0
    task: asyncio.Task[None] | None = None
    #: When ``observe`` last saw it (``PodStatus.mark``'s sequence).
    observed: int = 0

    @property
    def reconciled(self) -> bool:
        """Whether the reconciler has written the status of this generation: before, a
        write here would race its first one (and it would write again, with an Event)."""
        return bool(self.status.get("observedGeneration") == self.generation)


def pod_of(obj: Mapping[str, Any]) -> Pod | None:
    """The watch's view of a pod object; None for a pod the webhook did not inject."""
    metadata = _mapping(obj.get("metadata"))
    labels = _mapping(metadata.get("labels"))
    config = labels.get(names.CONFIG_LABEL)
    if not config:
        return None
    status = _mapping(obj.get("status"))
    return Pod(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        config=str(config),
        ip=str(status["podIP"]) if status.get("podIP") else None,
        finished=status.get("phase") in _FINISHED,
    )


def report_of(document: object) -> Report:
    """A sidecar's ``GET /status`` document read defensively: anything unexpected is
    ``unknown`` rather than an error."""
    if not isinstance(document, Mapping) or document.get("state") not in STATES:
        return Report(UNKNOWN)
    return Report(
        state=str(document["state"]),
        newest=_stamped(document.get("newest_checkpoint"), "published_at"),
        oldest=_stamped(document.get("oldest_unsynced"), "since"),
        reason=str(document["failure_reason"]) if document.get("failure_reason") else None,
    )


def _stamped(value: object, key: str) -> tuple[str, float] | None:
    if not isinstance(value, Mapping):
        return None
    path, at = value.get("path"), value.get(key)
    if not isinstance(path, str) or not isinstance(at, (int, float)) or isinstance(at, bool):
        return None
    return path, float(at)


def aggregate(reports: Mapping[str, Report], upload_dir: str | None, period: float) -> JsonDict:
    """The status fields of a SyncConfig from its pods' reports (by pod name), without the
    condition's transition time: the same reports give the same fields."""
    counts = {"total": len(reports), **{state: 0 for state in STATES}, UNKNOWN: 0}
    by_state: dict[str, list[str]] = {}
    reasons: set[str] = set()
    newest: tuple[float, str, str] | None = None
    oldest: tuple[float, str, str] | None = None
    for pod, report in sorted(reports.items()):
        counts[report.state] += 1
        by_state.setdefault(report.state, []).append(pod)
        if report.state == "failing" and report.reason:
            reasons.add(report.reason)
        if report.newest and (newest is None or report.newest[1] > newest[0]):
            newest = (report.newest[1], report.newest[0], pod)
        if report.oldest and (oldest is None or report.oldest[1] < oldest[0]):
            oldest = (report.oldest[1], report.oldest[0], pod)
    fields: JsonDict = {"pods": counts, "newestCheckpoint": None, "oldestUnsynced": None}
    if newest is not None:
        fields["newestCheckpoint"] = {
            "pod": newest[2],
            "path": newest[1],
            "publishedAt": rfc3339(newest[0]),
            **({"url": f"{upload_dir.rstrip('/')}/{newest[1]}"} if upload_dir else {}),
        }
    if oldest is not None:
        fields["oldestUnsynced"] = {
            "pod": oldest[2],
            "path": oldest[1],
            "since": rfc3339(oldest[0]),
        }
    fields["condition"] = _synced(counts, by_state, sorted(reasons), period)
    return fields


def _synced(
    counts: Mapping[str, int], pods: Mapping[str, list[str]], reasons: list[str], period: float
) -> tuple[str, str, str]:
    """The Synced condition: (status, reason, message)."""
    total = counts["total"]
    behind = f"behind by more than one syncPeriod ({period:g} s)"
    if counts["failing"]:
        why = f" ({', '.join(reasons)})" if reasons else ""
        also = f"; {counts['lagging']} lagging" if counts["lagging"] else ""
        return (
            "False",
            "Failing",
            f"{counts['failing']} of {total} pod(s) fail to sync{why}: "
            f"{in_use.shown(pods['failing'])}{also}",
        )
    if counts["lagging"]:
        return (
            "False",
            "Lagging",
            f"{counts['lagging']} of {total} pod(s) {behind}: {in_use.shown(pods['lagging'])}",
        )
    if not total:
        return "True", "NoPods", "no running pod uses this SyncConfig"
    others = _others(counts)
    if not counts["synced"]:
        return "Unknown", "NotReported", f"no pod has reported a sync yet: {others}"
    message = f"{counts['synced']} of {total} pod(s) synced"
    return "True", "Synced", message + (f"; {others}" if others else "")


def _others(counts: Mapping[str, int]) -> str:
    parts = []
    if counts["starting"]:
        parts.append(f"{counts['starting']} starting")
    if counts[UNKNOWN]:
        parts.append(
            f"{counts[UNKNOWN]} not reachable at <pod IP>:{contract.HTTP_PORT}/status "
            "(no IP yet, or the network keeps the operator out)"
        )
    return ", ".join(parts)


def desired_status(fields: Mapping[str, Any], current: Mapping[str, Any], now: str) -> JsonDict:
    """The status patch for ``fields`` over ``current``: the other conditions kept as they
    are (a merge patch replaces the whole list), Synced's transition time kept unless its
    status changes."""
    status, reason, message = fields["condition"]
    conditions = [
        c
        for c in current.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") != SYNCED
    ]
    previous = next(
        (
            c
            for c in current.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") == SYNCED
        ),
        None,
    )
    since = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else now
    )
    condition = {
        "type": SYNCED,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    return {
        "pods": fields["pods"],
        "newestCheckpoint": fields["newestCheckpoint"],
        "oldestUnsynced": fields["oldestUnsynced"],
        "conditions": [*conditions, condition],
    }


def unchanged(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return all(desired[key] == current.get(key) for key in desired)


def rfc3339(unix: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class PodStatus:
    """The leader's pod watch and pollers. ``observe`` is fed every SyncConfig the
    controller reconciles; ``run`` runs while this replica leads."""

    def __init__(
        self,
        client: kube.Kube,
        namespaces: Iterable[str] = (),
        port: int = contract.HTTP_PORT,
        concurrency: int = CONCURRENCY,
        timeout: float = TIMEOUT,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self._kube = client
        self._namespaces = tuple(namespaces)
        self._port = port
        self._concurrency = concurrency
        self._timeout = timeout
        self._min_interval = min_interval
        self.pods: dict[tuple[str, str], Pod] = {}
        self.configs: dict[tuple[str, str], Tracked] = {}
        self._synced = asyncio.Event()  # the pod list is complete
        self._http: aiohttp.ClientSession | None = None
        self._gate: asyncio.Semaphore | None = None
        self._running = False
        self._observations = 0

    # -- fed by the controller -------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """The SyncConfig as it is now (every watch event, every resync)."""
        metadata = _mapping(body.get("metadata"))
        spec = _mapping(body.get("spec"))
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        period = spec.get("syncPeriod", contract.SYNC_PERIOD.default)
        if not isinstance(period, (int, float)) or period <= 0:
            period = contract.SYNC_PERIOD.default
        upload_dir = spec.get("uploadDir") if isinstance(spec.get("uploadDir"), str) else None
        tracked = self.configs.get(key)
        if tracked is None:
            tracked = Tracked(*key, float(period), upload_dir, {}, "")
            self.configs[key] = tracked
        self._observations += 1
        tracked.observed = self._observations
        tracked.period, tracked.upload_dir = float(period), upload_dir
        tracked.status = _mapping(body.get("status"))
        tracked.resource_version = str(metadata.get("resourceVersion") or "")
        generation = metadata.get("generation")
        tracked.generation = generation if isinstance(generation, int) else 0
        if self._running and tracked.task is None:
            tracked.task = asyncio.get_running_loop().create_task(self._poll_forever(tracked))

    def mark(self) -> int:
        """A point in the sequence of ``observe`` calls: taken before a resync lists."""
        return self._observations

    def retain(self, keys: Iterable[tuple[str, str]], since: int) -> None:
        """Only these SyncConfigs existed when a resync listed them, at ``since``
        (``mark``): forget the others, but those observed since, which the listing
        could not hold (created while the resync went through the others)."""
        keep = set(keys)
        for key, tracked in list(self.configs.items()):
            if key not in keep and tracked.observed <= since:
                self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        tracked = self.configs.pop(key, None)
        if tracked is not None and tracked.task is not None:
            tracked.task.cancel()

    # -- while leading ---------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the pods and poll every SyncConfig's, until cancelled (leadership lost)."""
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self._timeout, sock_connect=self._timeout),
        )
        self._gate = asyncio.Semaphore(self._concurrency)
        self._running = True
        loop = asyncio.get_running_loop()
        for tracked in self.configs.values():
            tracked.task = loop.create_task(self._poll_forever(tracked))
        watches = [
            loop.create_task(self._watch(path))
            for path in (
                [kube.namespaced(PODS, ns) for ns in self._namespaces]
                if self._namespaces
                else [kube.cluster(PODS)]
            )
        ]
        try:
            await asyncio.gather(*watches)
        finally:
            self._running = False
            tasks = [*watches, *(t.task for t in self.configs.values() if t.task is not None)]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for tracked in self.configs.values():
                tracked.task = None
            self.pods.clear()
            self._synced.clear()
            await self._http.close()

    async def _watch(self, path: str) -> None:
        """List, then watch from there; list again when the watch's version is gone."""
        selector = {"labelSelector": f"{names.INJECT_LABEL}=true"}
        while True:
            try:
                version = await self._list(path, selector)
                self._synced.set()
                while version:
                    version = await self._follow(path, selector, version)
            except (kube.ApiError, OSError, TimeoutError, ValueError) as exc:
                log.warning("pod watch %s: %s; listing again in 5 s", path, exc)
                await asyncio.sleep(5.0)

    async def _list(self, path: str, selector: Mapping[str, str]) -> str:
        seen: dict[tuple[str, str], Pod] = {}
        params = {**selector, "limit": str(PAGE)}
        while True:
            page = await self._kube.get(path, params=params)
            for item in page.get("items") or []:
                pod = pod_of(item)
                if pod is not None:
                    seen[(pod.namespace, pod.name)] = pod
            metadata = _mapping(page.get("metadata"))
            if not metadata.get("continue"):
                break
            params = {**selector, "limit": str(PAGE), "continue": str(metadata["continue"])}
        scope = path.split("/namespaces/")[1].split("/")[0] if "/namespaces/" in path else None
        for key in [k for k in self.pods if scope is None or k[0] == scope]:
            if key not in seen:
                del self.pods[key]
        self.pods.update(seen)
        return str(metadata.get("resourceVersion") or "")

    async def _follow(self, path: str, selector: Mapping[str, str], version: str) -> str:
        """One watch from ``version``; the version to resume from, or "" to list again."""
        params = {
            **selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async for event in self._kube.watch(path, params, read_timeout=WATCH_SECONDS + 30):
            kind, obj = event.get("type"), _mapping(event.get("object"))
            if kind == "ERROR":
                return ""  # 410 Gone, mostly: the version is too old
            version = str(_mapping(obj.get("metadata")).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            metadata = _mapping(obj.get("metadata"))
            key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
            pod = pod_of(obj)
            if kind == "DELETED" or pod is None:
                self.pods.pop(key, None)
            else:
                self.pods[key] = pod
        return version

    async def _poll_forever(self, tracked: Tracked) -> None:
        loop = asyncio.get_running_loop()
        await self._synced.wait()
        key = (tracked.namespace, tracked.name)
        while self.configs.get(key) is tracked:
            started = loop.time()
            try:
                await self.poll(tracked)
            except (kube.ApiError, OSError, TimeoutError) as exc:
                log.warning("pod status of %s/%s: %s", tracked.namespace, tracked.name, exc)
            took = loop.time() - started
            if took > tracked.period / 2:
                log.info(
                    "polling the pods of %s/%s took %.1f s of its syncPeriod (%g s)",
                    tracked.namespace,
                    tracked.name,
                    took,
                    tracked.period,
                )
            # A change just after a pod's poll is seen at its next poll and written at the
            # end of that round: the next round starts a round's length before the period
            # is over, so the status is never more than one syncPeriod behind.
            interval = max(self._min_interval, tracked.period - took)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def poll(self, tracked: Tracked) -> bool:
        """Poll the SyncConfig's pods once and write its status if it changed; whether it
        wrote."""
        pods = [
            pod
            for pod in self.pods.values()
            if pod.namespace == tracked.namespace
            and pod.config == tracked.name
            and not pod.finished
        ]
        answers = await asyncio.gather(*(self._ask(pod) for pod in pods))
        reports = {pod.name: report for pod, report in zip(pods, answers, strict=True)}
        fields = aggregate(reports, tracked.upload_dir, tracked.period)
        for _ in range(RECONCILED_WAIT * 2):
            if tracked.reconciled:
                break
            await asyncio.sleep(0.5)
        else:
            return False  # the reconciler is behind: the next round writes
        for _ in range(3):
            desired = desired_status(fields, tracked.status, _now())
            if unchanged(desired, tracked.status):
                return False
            path = kube.namespaced(SYNCCONFIGS, tracked.namespace, tracked.name) + "/status"
            patch = {"metadata": {"resourceVersion": tracked.resource_version}, "status": desired}
            try:
                written = await self._kube.merge_patch(path, patch)
            except kube.ApiError as exc:
                if exc.status == 404:  # deleted
                    self._forget((tracked.namespace, tracked.name))
                    return False
                if exc.status != 409:
                    raise
                # Someone wrote meanwhile (the reconciler): again over what they wrote,
                # read now rather than when its watch event reaches observe().
                if not await self._refresh(tracked):
                    return False
                continue
            tracked.status = _mapping(written.get("status"))
            tracked.resource_version = str(
                _mapping(written.get("metadata")).get("resourceVersion") or ""
            )
            return True
        return False

    async def _refresh(self, tracked: Tracked) -> bool:
        """Read the SyncConfig's status and version again (listed by name: the operator
        lists and watches SyncConfigs, and gets none by name); False if it is gone."""
        listing = await self._kube.get(
            kube.namespaced(SYNCCONFIGS, tracked.namespace),
            params={"fieldSelector": f"metadata.name={tracked.name}"},
        )
        for item in listing.get("items") or []:
            metadata = _mapping(item.get("metadata"))
            tracked.status = _mapping(item.get("status"))
            tracked.resource_version = str(metadata.get("resourceVersion") or "")
            return True
        self._forget((tracked.namespace, tracked.name))
        return False

    async def _ask(self, pod: Pod) -> Report:
        if pod.ip is None:
            return Report(UNKNOWN)
        assert self._http is not None
        assert self._gate is not None
        host = f"[{pod.ip}]" if _is_ipv6(pod.ip) else pod.ip
        async with self._gate:
            try:
                async with self._http.get(f"http://{host}:{self._port}/status") as response:
                    if response.status != 200:
                        return Report(UNKNOWN)
                    body = await response.content.read(MAX_BODY)
                return report_of(json.loads(body))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                return Report(UNKNOWN)


def _is_ipv6(ip: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(ip), ipaddress.IPv6Address)
    except ValueError:
        return False


def _now() -> str:
    return rfc3339(datetime.datetime.now(datetime.UTC).timestamp())


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
