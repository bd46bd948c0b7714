"""What the monitoring tests share: the Prometheus binaries, and the metrics the chart's
dashboard and alerts may query."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from localcluster.processes import free_port
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


class Prometheus:
    """``prometheus`` scraping each job's targets every second, its API on a loopback port.

    ``popen`` starts it (a process in the local cluster's network namespace, where pod IPs
    are reachable, for a Prometheus "on the node"); ``api`` is the host's address of its
    API when that is not the loopback port it listens on.
    """

    def __init__(
        self,
        jobs: Mapping[str, Sequence[str]],
        workdir: Path,
        labels: Mapping[str, str] | None = None,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        self.port = free_port()
        self.api = f"127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": list(targets), "labels": dict(labels or {})}],
                }
                for job, targets in jobs.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = popen(
            [
                str(tool("prometheus")),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.api}{path}", timeout=5) as r:
            return json.loads(r.read()) if path.startswith("/api/") else r.status

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()}")
        try:
            return bool(self._get("/-/ready") == 200)
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: {the series' labels as JSON: value}."""
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", answer
        return {
            json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
            for item in answer["data"]["result"]
        }

    def value(self, expr: str) -> float | None:
        """The value of an expression with one series (None: no series yet)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return next(iter(result.values()), None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
