"""pytest fixtures of the object stores: ``seaweedfs``, ``fake_gcs`` and ``hdfs`` (session),
and a fresh bucket for each test (``s3_bucket``, ``gcs_bucket``). ``stall_proxy_factory`` (from
``tests.support.fault_proxy``) is re-exported so that ``pytest_plugins`` picks it up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.hdfs_server import HdfsServer, HdfsUnavailable, start_hdfs
from localcluster.object_stores import (
    GcsBucket,
    GcsServer,
    S3Bucket,
    S3Server,
    start_fake_gcs,
    start_seaweedfs,
)
from tests.support import requirements
from tests.support.fault_proxy import stall_proxy_factory

__all__ = ["fake_gcs", "gcs_bucket", "hdfs", "s3_bucket", "seaweedfs", "stall_proxy_factory"]

_STARTUPS = pytest.StashKey[dict[str, float]]()


def _record_startup(config: pytest.Config, name: str, seconds: float) -> None:
    config.stash.setdefault(_STARTUPS, {})[name] = seconds


@pytest.fixture(scope="session")
def seaweedfs(pytestconfig: pytest.Config) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole session (started on first use)."""
    server = start_seaweedfs()
    _record_startup(pytestconfig, "seaweedfs", server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake_gcs(pytestconfig: pytest.Config) -> Iterator[GcsServer]:
    """A fake-gcs-server for the whole session (started on first use)."""
    server = start_fake_gcs()
    _record_startup(pytestconfig, "fake-gcs-server", server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hdfs(pytestconfig: pytest.Config) -> Iterator[HdfsServer]:
    """A real HDFS (Hadoop's MiniDFSCluster, WebHDFS on) for the whole session, started on
    first use; built first if needed (``tools/hdfs.sh``: a JDK and Maven Central)."""
    try:
        server = start_hdfs()
    except HdfsUnavailable as exc:
        requirements.unavailable(f"the tests' HDFS cannot be built: {exc}")
    _record_startup(pytestconfig, "hdfs", server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(seaweedfs: S3Server) -> S3Bucket:
    """A new, empty, uniquely named bucket on the session's SeaweedFS (not deleted after)."""
    return S3Bucket(seaweedfs, seaweedfs.make_bucket())


@pytest.fixture
def gcs_bucket(fake_gcs: GcsServer) -> GcsBucket:
    """A new, empty, uniquely named bucket on the session's fake-gcs-server."""
    return GcsBucket(fake_gcs, fake_gcs.make_bucket())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long the session's object stores took to start (only those used)."""
    startups = terminalreporter.config.stash.get(_STARTUPS, None)
    if startups:
        terminalreporter.write_line(
            "object stores started in: "
            + ", ".join(f"{name} {secs:.2f}s" for name, secs in startups.items())
        )
