"""Where the local cluster cannot run, its tests skip, unless CI requires the node."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import cluster_fixtures as fixtures


def test_without_root_the_cluster_tests_skip_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv(fixtures.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        fixtures._start_local(tmp_path)


def test_in_ci_a_machine_that_cannot_run_it_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv(fixtures.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="needs Linux"):
        fixtures._start_local(tmp_path)
