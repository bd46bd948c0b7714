"""Fixtures of the pod tests: the operator as a process beside the local cluster, and a
"pods" section of figures at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localcluster.harness import Cluster
from tests.support.operator_process import Operator, delete_webhooks, start_operator
from tests.support.requirements import external_cluster_only

WEBHOOK = "trialsync-cluster-flow"


@pytest.fixture(scope="module")
def operator_beside(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    if cluster.local is None:
        external_cluster_only("the operator process needs the local cluster's network")
    operator = start_operator(
        cluster.kube,
        tmp_path_factory.mktemp("operator"),
        extra_args=["--sidecar-image", cluster.images.sidecar],
        webhook_name=WEBHOOK,
    )
    try:
        with cluster.local.reach_host(operator.webhook_port):
            yield operator
    finally:
        delete_webhooks(cluster.kube, WEBHOOK)
        operator.stop()


_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def pod_figures(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(**figures)``: one line of this test's figures in the end-of-run summary."""

    def report(**figures: Any) -> None:
        line = f"{request.node.name}: " + " ".join(f"{k}={v}" for k, v in figures.items())
        pytestconfig.stash.setdefault(_FIGURES, []).append(line)

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = terminalreporter.config.stash.get(_FIGURES, None)
    if lines:
        terminalreporter.section("pods")
        for line in lines:
            terminalreporter.write_line(line)
