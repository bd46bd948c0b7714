"""Prometheus metrics of one sidecar, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.head_busy_retries = Counter(
            "trialsync_head_busy_retries",
            "Requests retried because the head-node service was busy (503) or unreachable.",
            registry=self.registry,
        )
