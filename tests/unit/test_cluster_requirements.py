"""Where the local cluster or another part cannot run, tests skip, unless CI requires it;
and a CI session with a skip it does not accept fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import cluster_fixtures as fixtures
from tests.support import requirements


def test_without_root_the_cluster_tests_skip_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv(requirements.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        fixtures._start_local(tmp_path)


def test_in_ci_a_machine_that_cannot_run_it_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv(requirements.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="needs Linux"):
        fixtures._start_local(tmp_path)


def test_a_missing_part_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(requirements.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no helm"):
        requirements.unavailable("no helm")
    monkeypatch.setenv(requirements.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="=1 but no helm"):
        requirements.unavailable("no helm")


def test_ci_accepts_only_external_cluster_skips_and_only_with_an_external_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        requirements.external_cluster_only("needs this host's loopback")
    reason = str(skipped.value)
    monkeypatch.delenv(requirements.EXTERNAL_ENV, raising=False)
    assert not requirements.accepted_in_ci(reason)
    monkeypatch.setenv(requirements.EXTERNAL_ENV, "/tmp/kind.kubeconfig")
    assert requirements.accepted_in_ci(reason)
    assert not requirements.accepted_in_ci("no helm")


def test_a_ci_session_with_an_unaccepted_skip_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_logreport, pytest_sessionfinish\n"
    )
    pytester.makepyfile(
        "import pytest\ndef test_runs():\n    pass\ndef test_skips():\n    pytest.skip('no helm')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    monkeypatch.delenv(requirements.REQUIRE_ENV, raising=False)
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0
    monkeypatch.setenv(requirements.REQUIRE_ENV, "1")
    ci = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert ci.ret == pytest.ExitCode.TESTS_FAILED
    ci.stdout.fnmatch_lines(["*1 tests skipped, which CI does not accept*", "*test_skips*"])
