"""Prometheus metrics of one sidecar, in a registry of its own.

docs/operator.md, "Monitoring", lists them all. Counters are exposed with a ``_total``
suffix (``trialsync_uploaded_bytes_total``); every label has a small fixed set of values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The operations ``trialsync_store_requests_total`` counts requests by: ``put`` a whole
#: object, ``put_part`` one part (S3) or chunk (GCS) of a large one, ``multipart_start``,
#: ``multipart_complete`` and ``multipart_abort`` around them, ``get`` (whole or a range),
#: ``head``, ``list`` (one page), ``delete``; ``other``: registration and claims on the
#: head-node service, and whatever a backend sends besides.
STORE_OPERATIONS = (
    "put",
    "put_part",
    "multipart_start",
    "multipart_complete",
    "multipart_abort",
    "get",
    "head",
    "list",
    "delete",
    "other",
)
#: From 10 ms (a small checkpoint on a near store) to 10 minutes (a large one, retried).
PUBLISH_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.bytes_uploaded = Counter(
            "trialsync_uploaded_bytes",
            "Bytes uploaded, by kind of file.",
            ["kind"],
            registry=self.registry,
        )
        self.files_uploaded = Counter(
            "trialsync_uploaded_files",
            "Files uploaded, by kind of file.",
            ["kind"],
            registry=self.registry,
        )
        self.checkpoints_published = Counter(
            "trialsync_checkpoints_published",
            "Checkpoints published with their manifest.",
            registry=self.registry,
        )
        self.checkpoints_retired = Counter(
            "trialsync_checkpoints_retired",
            "Remote checkpoints deleted by keep_checkpoints (manifest first).",
            registry=self.registry,
        )
        self.syncs = Counter(
            "trialsync_syncs", "Sync runs, by outcome.", ["outcome"], registry=self.registry
        )
        self.failures = Counter(
            "trialsync_sync_failures",
            "Failed sync runs, by reason (timeout, credentials: the store refused them, "
            "cancelled: a stray cancellation cut the run short, or error).",
            ["reason"],
            registry=self.registry,
        )
        self.file_failures = Counter(
            "trialsync_file_failures",
            "Files that could not be uploaded as scanned, by reason: unreadable (EACCES, "
            "EIO, ...), vanished (deleted), changed (shrank or changed under the reader), "
            "refused (by the head-node service). Each is logged with its path.",
            ["reason"],
            registry=self.registry,
        )
        self.failed_files = Gauge(
            "trialsync_failed_files",
            "Unreadable files waiting for a change; their checkpoints are not published.",
            registry=self.registry,
        )
        self.duration = Histogram(
            "trialsync_sync_duration_seconds",
            "Duration of sync runs.",
            buckets=(0.005, 0.05, 0.25, 1, 5, 15, 60, 300, 1800),
            registry=self.registry,
        )
        self.last_success = Gauge(
            "trialsync_last_success_timestamp_seconds",
            "Unix time of the last successful sync run.",
            registry=self.registry,
        )
        self.failing_since = Gauge(
            "trialsync_failing_since_timestamp_seconds",
            "Unix time of the first of the sync runs failed since the last success; 0 "
            "while the last run succeeded.",
            registry=self.registry,
        )
        self.sync_timeout = Gauge(
            "trialsync_sync_timeout_seconds",
            "The SyncConfig's syncTimeout: how long one sync run may take.",
            registry=self.registry,
        )
        self.pending_files = Gauge(
            "trialsync_pending_files",
            "Changed files not yet uploaded.",
            registry=self.registry,
        )
        self.pending_checkpoints = Gauge(
            "trialsync_pending_checkpoints",
            "Checkpoints seen but not yet published.",
            registry=self.registry,
        )
        self.restored_bytes = Counter(
            "trialsync_restored_bytes",
            "Bytes restored into the trial volume at start (restore on start).",
            registry=self.registry,
        )
        self.restored_files = Counter(
            "trialsync_restored_files",
            "Files restored into the trial volume at start.",
            registry=self.registry,
        )
        self.restore_seconds = Gauge(
            "trialsync_restore_seconds",
            "Seconds the restore at start took (0 until it is done, or without one).",
            registry=self.registry,
        )
        self.data_loss_window = Gauge(
            "trialsync_data_loss_window_seconds",
            "Seconds since the last checkpoint was published (or since the sidecar "
            "started): the training a loss of the pod now would cost.",
            registry=self.registry,
        )
        self.head_refusals = Counter(
            "trialsync_head_refusals",
            "Requests the head-node service refused for good, by reason (claimed, head_only, "
            "shared_token, too_large; not_trusted: the server at the head's address failed "
            "the TLS handshake and was sent nothing); the log names each path.",
            ["reason"],
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "trialsync_publish_latency_seconds",
            "Seconds from a checkpoint being complete (its settle window over, or the start "
            "of the sync a trigger asked for) to its manifest written, retries included.",
            buckets=PUBLISH_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_requests = Counter(
            "trialsync_store_requests",
            "Requests sent to the store (S3, GCS, another fsspec backend or the head-node "
            "service), by operation; every attempt counts, retries included.",
            ["operation"],
            registry=self.registry,
        )
        # Bound once: counting a request is one increment, no label lookup.
        self._requests = {op: self.store_requests.labels(op) for op in STORE_OPERATIONS}
        self.head_busy_retries = Counter(
            "trialsync_head_busy_retries",
            "Requests retried because the head-node service was busy (503) or unreachable.",
            registry=self.registry,
        )

    def count_request(self, operation: str) -> None:
        """One request sent to the store; ``operation`` one of ``STORE_OPERATIONS``."""
        counter = self._requests.get(operation)
        if counter is None:
            counter = self._requests["other"]
        counter.inc()
