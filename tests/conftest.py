"""Fixtures shared by every test: real servers on loopback, started once per session; and
the rule that CI skips nothing it could run (tests/support/requirements.py)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

from tests.support import figures, requirements

# gcsfs reads this when imported: against the GCS emulator, use its plain HTTP client
# (see trialsync.cli.use_plain_gcs_client_for_emulators).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = [
    "pytester",
    "tests.support.store_fixtures",
    "tests.support.kube_fixtures",
    "tests.support.head_service",
    "tests.support.cluster_fixtures",
]

_SKIPPED: list[tuple[str, str]] = []
#: Seconds spent per test file (set-up, call and tear-down; a shared fixture's set-up counts
#: for the file that first asked for it): the suite's time budget is watched by file.
_FILE_SECONDS: Counter[str] = Counter()
SLOWEST_FILES = 12


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FILE_SECONDS[report.nodeid.split("::", 1)[0]] += report.duration
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIPPED.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, a skip CI does not accept fails the session: CI installs all a test needs."""
    if not requirements.required():
        return
    refused = [(node, why) for node, why in _SKIPPED if not requirements.accepted_in_ci(why)]
    if refused:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"{requirements.REQUIRE_ENV}=1: {len(refused)} tests skipped, which CI does "
                "not accept:",
                red=True,
            )
            for node, why in refused:
                reporter.write_line(f"  {node}: {why}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures tests reported (``tests/support/figures.py``), a section each, and the
    slowest test files."""
    figures.write_sections(terminalreporter)
    if _FILE_SECONDS:
        terminalreporter.write_sep("=", f"slowest {SLOWEST_FILES} test files")
        for path, seconds in _FILE_SECONDS.most_common(SLOWEST_FILES):
            terminalreporter.write_line(f"{seconds:8.1f}s {path}")
