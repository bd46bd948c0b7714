"""The fault suite's seeds and figures: each test logs its seed and reports its counts in a
"fault suite" section at the end of the run, so they can be quoted.

Every random choice comes from the seed; ``FAULTS_SEED=<n>`` reruns a test with one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest

_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    seed = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: seed {seed} (rerun with FAULTS_SEED={seed})")
    return seed


@pytest.fixture
def fault_report(
    pytestconfig: pytest.Config, request: pytest.FixtureRequest
) -> Callable[..., None]:
    """``report(**counts)``: one line of figures for this test in the end-of-run summary."""

    def report(**counts: Any) -> None:
        line = f"{request.node.name}: " + " ".join(f"{k}={v}" for k, v in counts.items())
        pytestconfig.stash.setdefault(_FIGURES, []).append(line)
        print(line)

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = terminalreporter.config.stash.get(_FIGURES, None)
    if lines:
        terminalreporter.section("fault suite")
        for line in lines:
            terminalreporter.write_line(line)
