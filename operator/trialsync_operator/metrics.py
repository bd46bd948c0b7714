"""The operator's Prometheus metrics, in a registry of its own, served at ``/metrics`` on
the health port (``health.serve``). docs/operator.md, "Metrics", lists every one.

The injection counters follow Istio's sidecar injector: every review of a pod counts one
request, and exactly one of success (the sidecar injected), skip (admitted without a
sidecar, by design or by ``--on-config-error admit``) or failure (refused), each with the
reason the admission code gave. The admission path only increments counters and observes
one histogram: no allocation beyond prometheus_client's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

#: Admission latency buckets, in seconds: an admission costs about a millisecond of CPU,
#: and the apiserver gives up at the webhook's timeoutSeconds (10 by default).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(
        self, skip_reasons: Iterable[str] = (), failure_reasons: Iterable[str] = ()
    ) -> None:
        """``skip_reasons`` and ``failure_reasons`` are exported at 0 from the start, so a
        rate over them is defined before the first such pod."""
        self.registry = CollectorRegistry()
        self.injection_requests = Counter(
            "trialsync_injection_requests",
            "Pod admissions reviewed by the injection webhook (success + skip + failure).",
            registry=self.registry,
        )
        self.injection_success = Counter(
            "trialsync_injection_success",
            "Pods admitted with the sidecar injected.",
            registry=self.registry,
        )
        self.injection_skip = Counter(
            "trialsync_injection_skip",
            "Pods admitted without a sidecar, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.injection_failure = Counter(
            "trialsync_injection_failure",
            "Pods refused by the injection webhook, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.admission_duration = Histogram(
            "trialsync_operator_admission_duration_seconds",
            "Time from a webhook request's arrival to its answer, by webhook path.",
            ["webhook"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.missed_injections = Gauge(
            "trialsync_missed_injections",
            "Live pods that opted in but run without the sidecar (admitted while the "
            "webhook was not called), by namespace and SyncConfig; exported by the leader.",
            ["namespace", "syncconfig"],
            registry=self.registry,
        )
        self.missed_injection_scans = Counter(
            "trialsync_operator_missed_injection_scans",
            "Scans of the opted-in pods for missed injections, by result (ok or error).",
            ["result"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "trialsync_operator_leader",
            "1 while this replica is the leader (writes status and Events), else 0.",
            registry=self.registry,
        )
        for reason in skip_reasons:
            self.injection_skip.labels(reason)
        for reason in failure_reasons:
            self.injection_failure.labels(reason)
        for result in ("ok", "error"):
            self.missed_injection_scans.labels(result)

    def follow_leadership(self, is_leader: Callable[[], bool]) -> None:
        """Export ``trialsync_operator_leader`` from ``is_leader``, asked at each scrape."""
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
