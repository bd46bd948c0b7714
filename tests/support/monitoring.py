"""What the monitoring tests share: the Prometheus binaries, and the metrics the chart's
dashboard and alerts may query."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from tests.support.requirements import unavailable
from trialsync.metrics import Metrics
from trialsync_operator.metrics import Metrics as OperatorMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = REPO_ROOT / "charts" / "trialsync" / "files"
ALERTS = CHART_FILES / "alerts.yaml"
DASHBOARD = CHART_FILES / "dashboard.json"

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def tool(name: str) -> Path:
    """``prometheus`` or ``promtool`` from TRIALSYNC_TOOLS_BIN (``tools/build.sh``)."""
    directory = os.environ.get("TRIALSYNC_TOOLS_BIN")
    path = Path(directory, name) if directory else None
    if path is None or not os.access(path, os.X_OK):
        unavailable(f"no {name}: set TRIALSYNC_TOOLS_BIN=$(bash tools/build.sh --bin-dir)")
    return path


def sidecar_series() -> set[str]:
    """Every series name the sidecar's registry serves (a histogram's three)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def operator_series() -> set[str]:
    """Every series name the operator's registry serves (a histogram's three)."""
    names: set[str] = set()
    for family in OperatorMetrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def sidecar_metrics() -> set[str]:
    """The sidecar's metrics as documented: counters with ``_total``, histograms bare."""
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    }


_FUNCTIONS_AND_WORDS = re.compile(r"\btrialsync_[a-z0-9_]+")


def metrics_in(expressions: Iterable[str]) -> set[str]:
    """The trialsync series names PromQL ``expressions`` select."""
    return {name for expr in expressions for name in _FUNCTIONS_AND_WORDS.findall(expr)}
