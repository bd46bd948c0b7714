"""Whether and why the webhook injects a pod: each step of its decision as one check with
a verdict (pure; ``live`` gathers the facts from a cluster, or the caller from files).

The steps are the webhook's, in its order: the configuration's objectSelector (the
opt-in label) and namespaceSelector, the operator's watched namespaces, a sidecar the pod
already has (left alone), then ``injection.plan`` itself: the SyncConfig the pod names,
its validity, whether it syncs at all, and the pod's own annotations. What ``plan``
decides is taken from ``plan``, never re-derived, so ``inject`` prints the webhook's
patch applied and ``check-inject`` can only disagree with the webhook where the facts
given to it (SyncConfig, operator settings, namespace labels) differ from the cluster's.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from typing import Any

from trialsync.contract import Mode
from trialsync_operator import names, selectors
from trialsync_operator.admission import injection, patch
from trialsync_operator.settings import Settings

JsonDict = dict[str, Any]


class Verdict(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    INFO = "info"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str

    def line(self) -> str:
        return f"{self.verdict.value:<7} {self.name}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Webhook:
    """The pods webhook of a MutatingWebhookConfiguration: what decides which pods reach
    the operator, and what happens when the operator does not answer."""

    configuration: str
    object_selector: Mapping[str, Any]
    namespace_selector: Mapping[str, Any]
    failure_policy: str = "Fail"
    #: The Service the apiserver calls (namespace, name), or None with a url clientConfig.
    service: tuple[str, str] | None = None
    url: str | None = None

    @classmethod
    def of(cls, configuration: Mapping[str, Any], webhook: Mapping[str, Any]) -> Webhook:
        client = _mapping(webhook.get("clientConfig"))
        service = _mapping(client.get("service"))
        return cls(
            configuration=str(_mapping(configuration.get("metadata")).get("name") or ""),
            object_selector=_mapping(webhook.get("objectSelector")),
            namespace_selector=_mapping(webhook.get("namespaceSelector")),
            failure_policy=str(webhook.get("failurePolicy") or "Fail"),
            service=(str(service.get("namespace")), str(service.get("name"))) if service else None,
            url=str(client["url"]) if client.get("url") else None,
        )


#: The pods webhook as the chart renders it with its default values, for a check with no
#: cluster: the release namespace and webhook.excludeNamespaces are not known offline.
CHART_WEBHOOK = Webhook(
    configuration="the chart's defaults",
    object_selector={"matchLabels": {names.INJECT_LABEL: "true"}},
    namespace_selector={
        "matchExpressions": [
            {
                "key": selectors.NAME_LABEL,
                "operator": "NotIn",
                "values": ["kube-system", "kube-public", "kube-node-lease"],
            },
            {"key": selectors.OPT_OUT_LABEL, "operator": "NotIn", "values": ["disabled"]},
        ]
    },
)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the webhook's decision about a pod depends on besides the pod."""

    settings: Settings
    lookup: injection.Lookup
    #: The pods webhook (None: no configuration has one, so no pod reaches the operator).
    webhook: Webhook | None = CHART_WEBHOOK
    #: The namespace's labels (None: not known; the selector then sees only its name).
    namespace_labels: Mapping[str, str] | None = None
    #: A SyncConfig's status.conditions Ready, by (namespace, name), where known.
    ready: Callable[[str, str], Mapping[str, Any] | None] = lambda namespace, name: None
    #: The operator's Service's ready endpoints (None: not known, or a url clientConfig).
    ready_endpoints: int | None = None
    #: Where the facts come from, for the output ("the cluster", "--syncconfig x.yaml").
    source: str = ""
    #: Where the operator's settings (sidecar image, resources...) come from, and whether
    #: they are the running operator's.
    settings_source: str = ""
    settings_known: bool = True


@dataclasses.dataclass
class Report:
    """The checks, the outcome, and when injected, the webhook's patch."""

    checks: list[Check] = dataclasses.field(default_factory=list)
    injected: bool = False
    outcome: str = ""
    ops: list[JsonDict] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def add(self, name: str, verdict: Verdict, detail: str) -> None:
        self.checks.append(Check(name, verdict, detail))

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks] + [f"verdict: {self.outcome}"]


def assess(
    pod: Mapping[str, Any],
    namespace: str,
    facts: Facts,
    *,
    live: bool = False,
    missed_event: Mapping[str, Any] | None = None,
) -> Report:
    """Whether the webhook injects ``pod`` created in ``namespace``, step by step.

    ``live``: the pod exists (it was admitted); one without the sidecar is explained by
    what may have kept the webhook from it then, and by ``missed_event``, the
    ``MissedInjection`` Event the operator recorded on it, if any."""
    report = Report()
    meta = _mapping(pod.get("metadata"))
    labels = {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()}
    if facts.settings_source:
        verdict = Verdict.OK if facts.settings_known else Verdict.INFO
        report.add("operator settings", verdict, facts.settings_source)
    reached = _reaches_webhook(report, labels, namespace, facts)
    if injection.has_sidecar(pod):
        status = _mapping(meta.get("annotations")).get(names.STATUS_ANNOTATION)
        report.add("sidecar", Verdict.OK, f"the pod has {names.SIDECAR_NAME}{_status(status)}")
        report.injected = True
        report.outcome = "injected" if live else "injected already (the webhook leaves it alone)"
        return report
    if not reached:
        report.outcome = f"not injected: {_first_failure(report)}"
        return report
    would = _plan(report, pod, namespace, facts)
    if not live:
        report.injected = would
        report.outcome = "would be injected" if would else f"not injected: {_first_failure(report)}"
        return report
    if would:
        report.add(
            "sidecar",
            Verdict.FAIL,
            f"the pod has no {names.SIDECAR_NAME}, though the webhook would inject it now",
        )
        _missed(report, facts)
        if missed_event is not None:
            report.add("missed injection", Verdict.INFO, _missed_event(missed_event))
        # The cause, where one is known, rather than the symptom.
        failed = [c for c in report.checks if c.verdict is Verdict.FAIL]
        report.outcome = f"not injected: {failed[-1].name}: {failed[-1].detail}"
        return report
    report.outcome = f"not injected: {_first_failure(report)}"
    return report


def _reaches_webhook(
    report: Report, labels: Mapping[str, str], namespace: str, facts: Facts
) -> bool:
    """The configuration's selectors and the operator's watched namespaces."""
    webhook = facts.webhook
    if webhook is None:
        report.add(
            "webhook",
            Verdict.FAIL,
            f"no MutatingWebhookConfiguration has the webhook {names.POD_WEBHOOK}: trialsync "
            "is not installed in this cluster, so no pod reaches it",
        )
        return False
    if webhook is not CHART_WEBHOOK:
        calls = f"Service {'/'.join(webhook.service)}" if webhook.service else webhook.url
        report.add(
            "webhook",
            Verdict.OK,
            f"MutatingWebhookConfiguration {webhook.configuration} calls {calls} "
            f"(failurePolicy {webhook.failure_policy})",
        )
    reached = True
    missing = selectors.mismatch(webhook.object_selector, labels)
    if missing is None:
        report.add("opt-in label", Verdict.OK, f"{names.INJECT_LABEL}=true")
    else:
        reached = False
        report.add(
            "opt-in label",
            Verdict.FAIL,
            f"the webhook's objectSelector asks for {missing}: only pods labelled "
            f'{names.INJECT_LABEL}: "true" reach it',
        )
    known = facts.namespace_labels is not None
    refusal = selectors.namespace_refusal(
        webhook.namespace_selector, namespace, facts.namespace_labels or {}
    )
    watched = facts.settings.namespaces
    if refusal is not None:
        reached = False
        report.add("namespace", Verdict.FAIL, refusal)
    elif watched and namespace not in watched:
        reached = False
        report.add(
            "namespace",
            Verdict.FAIL,
            f"the operator watches only {', '.join(watched)} (--watch-namespace), not "
            f"{namespace}: it refuses the pod",
        )
    elif known:
        report.add("namespace", Verdict.OK, f"{namespace} is served")
    else:
        report.add(
            "namespace",
            Verdict.OK,
            f"{namespace} is not a system namespace (the release namespace, "
            "webhook.excludeNamespaces and the namespace's labels are known only in the "
            "cluster)",
        )
    return reached


def _plan(report: Report, pod: Mapping[str, Any], namespace: str, facts: Facts) -> bool:
    """``injection.plan``'s decision, split into the steps it takes."""
    admit = facts.settings.on_config_error == "admit"
    refused = (
        " (admitted without it: --on-config-error admit)" if admit else " (the pod is refused)"
    )
    try:
        config = injection.config_name(pod)
    except injection.Refusal as exc:
        report.add("config annotation", Verdict.FAIL, f"{exc}{refused}")
        return False
    report.add("config annotation", Verdict.OK, f"{names.CONFIG_ANNOTATION}={config}")
    view = facts.lookup(namespace, config)
    if view is None:
        where = f" ({facts.source})" if facts.source else ""
        report.add(
            "SyncConfig",
            Verdict.FAIL,
            f"{namespace}/{config} does not exist{where}{refused}",
        )
        return False
    ready = facts.ready(namespace, config)
    condition = _condition(ready)
    if not view.valid:
        report.add(
            "SyncConfig",
            Verdict.FAIL,
            f"{namespace}/{config} is invalid ({view.reason}): {view.message}{refused}",
        )
        return False
    if ready is not None and ready.get("status") != "True":
        # Valid to the operator, yet not Ready: a Secret missing, being deleted.
        report.add("SyncConfig", Verdict.WARN, f"{namespace}/{config} is valid, {condition}")
    else:
        report.add(
            "SyncConfig",
            Verdict.OK,
            f"{namespace}/{config} is valid{condition and ', ' + condition}",
        )
    if view.mode is Mode.DISABLED:
        report.add(
            "syncing",
            Verdict.FAIL,
            f"SyncConfig {namespace}/{config} disables syncing (syncer: none, no uploadDir)",
        )
        return False
    report.add("syncing", Verdict.OK, f"mode {view.mode.value}")
    try:
        result = injection.plan(pod, namespace, facts.lookup, facts.settings.defaults)
    except injection.Refusal as exc:
        report.add("pod annotations", Verdict.FAIL, f"{exc}{refused}")
        return False
    assert result.patch is not None  # plan injects whenever it neither refuses nor skips
    report.add("pod annotations", Verdict.OK, "the sidecar fits the pod")
    report.ops = patch.json_patch(pod, result.patch)
    report.warnings = list(result.warnings)
    for warning in result.warnings:
        report.add("admission warning", Verdict.WARN, warning)
    return True


def _missed(report: Report, facts: Facts) -> None:
    """Why an admitted pod that the webhook would inject has no sidecar."""
    webhook = facts.webhook
    assert webhook is not None
    if webhook.failure_policy != "Ignore":
        report.add(
            "failurePolicy",
            Verdict.WARN,
            f"{webhook.failure_policy}: the pod could not have been admitted without the "
            "webhook's answer, so it was created before the webhook selected it (the "
            "configuration, the namespace's labels or the pod's label changed since)",
        )
        return
    if facts.ready_endpoints is None:
        detail = (
            "Ignore: a pod is admitted without its sidecar while the operator does not "
            "answer; whether the operator is up now is not known"
            + (f" (the webhook calls {webhook.url})" if webhook.url else "")
        )
    elif facts.ready_endpoints == 0:
        assert webhook.service is not None
        detail = (
            f"Ignore, and Service {'/'.join(webhook.service)} has no ready endpoint: the "
            "operator is down, and pods are admitted without their sidecar"
        )
    else:
        assert webhook.service is not None
        detail = (
            f"Ignore: the operator was likely down or unreachable when the pod was created "
            f"(Service {'/'.join(webhook.service)} has {facts.ready_endpoints} ready "
            "endpoint(s) now); recreate the pod"
        )
    report.add("failurePolicy", Verdict.FAIL, detail)


def _missed_event(event: Mapping[str, Any]) -> str:
    when = event.get("lastTimestamp") or event.get("eventTime") or "an unknown time"
    return (
        f"the operator recorded Event {names.MISSED_INJECTION_REASON} on this pod at {when} "
        "(kubectl describe pod): a running pod cannot be given the sidecar; delete it, and "
        "recreate it (a Job's or another controller's pod: its controller makes a new one)"
    )


def _condition(ready: Mapping[str, Any] | None) -> str:
    if not ready:
        return ""
    reason = f" ({ready['reason']})" if ready.get("reason") else ""
    message = f": {ready['message']}" if ready.get("message") else ""
    return f"Ready={ready.get('status')}{reason}{message}"


def _status(raw: object) -> str:
    try:
        status = json.loads(str(raw)) if raw else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        return ""
    return (
        f" (from SyncConfig {status.get('config')} generation {status.get('generation')}, "
        f"role {status.get('role')}, mode {status.get('mode')})"
    )


def _first_failure(report: Report) -> str:
    failed = next((c for c in report.checks if c.verdict is Verdict.FAIL), None)
    return f"{failed.name}: {failed.detail}" if failed else "unknown"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
