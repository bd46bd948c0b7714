"""The chart's Grafana dashboard queries only metrics the sidecar or the operator serves,
and docs/operator.md lists them all."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.monitoring import (
    DASHBOARD,
    REPO_ROOT,
    metrics_in,
    operator_series,
    sidecar_metrics,
    sidecar_series,
)
from trialsync.metrics import Metrics


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_the_dashboard_parses_and_its_panels_query_served_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "trialsync"
    exprs = _expressions(dashboard)
    assert all(exprs), "a panel without a query"
    queried = metrics_in(exprs)
    unknown = queried - sidecar_series() - operator_series()
    assert not unknown, f"the dashboard queries metrics nobody serves: {sorted(unknown)}"
    # Every operator metric and the sidecar's main ones have a panel.
    for name in (
        "trialsync_missed_injections",
        "trialsync_injection_success_total",
        "trialsync_injection_skip_total",
        "trialsync_injection_failure_total",
        "trialsync_data_loss_window_seconds",
        "trialsync_publish_latency_seconds_bucket",
        "trialsync_store_requests_total",
        "trialsync_uploaded_bytes_total",
    ):
        assert name in queried, name


def test_every_panel_has_a_unique_id_a_description_and_a_place() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["description"], panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        for target in panel["targets"]:
            # Per-pod series only where the panel is about single sidecars: no label of
            # unbounded values in a sum.
            assert not re.search(r"by \([^)]*\b(path|file)\b", target["expr"])


def test_the_operator_docs_list_every_metric_with_its_type() -> None:
    doc = (REPO_ROOT / "docs" / "operator.md").read_text()
    section = doc.split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    documented: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `trialsync_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`(trialsync_[a-z_]+)`", cells[0]):
                documented[name] = cells[1].split()[0]
    assert set(documented) == sidecar_metrics()
    types = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in Metrics().registry.collect()
    }
    for name, kind in types.items():
        assert documented[name] == kind, name
