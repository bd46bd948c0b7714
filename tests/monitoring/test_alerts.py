"""The chart's alert rules (charts/trialsync/files/alerts.yaml) with the real promtool:
they load, and each fires on exactly the condition it names (alerts_test.yaml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support.monitoring import ALERTS, metrics_in, operator_series, sidecar_series, tool

HERE = Path(__file__).parent


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("promtool")), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_each_alert_fires_on_exactly_its_condition() -> None:
    done = _promtool("test", "rules", str(HERE / "alerts_test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_and_queries_metrics_that_exist() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules}
    queried = metrics_in(r["expr"] for r in rules)
    assert queried <= sidecar_series() | operator_series(), queried - sidecar_series()
