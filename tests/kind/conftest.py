"""The kind cluster of ``make kind-up``, for the tests of the README's kind path.

``kind_cluster`` (session) runs ``kind/up.sh`` for a cluster of the tests' own
(``trialsync-test``: a user's ``trialsync`` cluster is left alone), new each session (one
an interrupted session left is deleted first), reads what it prints, and runs
``kind/down.sh`` at the end. On a machine without podman or Go it skips, saying
so; under CI that is a failure (``tests/support/requirements.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcluster.control_plane import REPO_ROOT
from tests.support.requirements import unavailable

NAME = "trialsync-test"
#: Seconds up.sh may take: the first run on a machine builds kind and its node image.
UP_TIMEOUT = 3600


@dataclass(frozen=True)
class KindCluster:
    """What ``kind/up.sh`` printed."""

    kubeconfig: Path
    #: An address of the cluster's network namespace that its pods reach (the gateway of
    #: the kind network), and that namespace.
    host_ip: str
    netns: Path
    up_seconds: float


def _parse(stdout: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[KindCluster]:
    for tool in ("podman", "runc", "go"):
        if shutil.which(tool) is None:
            unavailable(f"kind on podman needs {tool} (make system-deps)")
    env = {**os.environ, "TRIALSYNC_KIND_NAME": NAME}
    # A fresh cluster, as the README's user has: one an interrupted run left goes first.
    _down(env)
    started = time.monotonic()
    up = subprocess.run(
        ["bash", "kind/up.sh"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
    )
    try:
        if up.returncode != 0:
            raise AssertionError(f"kind/up.sh failed ({up.returncode}):\n{up.stderr[-4000:]}")
        printed = _parse(up.stdout)
        yield KindCluster(
            kubeconfig=Path(printed["TRIALSYNC_KUBECONFIG"]),
            host_ip=printed["TRIALSYNC_CLUSTER_HOST_IP"],
            netns=Path(printed["TRIALSYNC_CLUSTER_NETNS"]),
            up_seconds=time.monotonic() - started,
        )
    finally:
        _down(env)


def _down(env: dict[str, str]) -> None:
    subprocess.run(
        ["bash", "kind/down.sh"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=300
    )
