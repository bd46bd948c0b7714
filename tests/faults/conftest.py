"""The fault suite's seeds and figures: each test logs its seed and reports its counts in a
"fault suite" section at the end of the run, so they can be quoted.

Every random choice comes from the seed; ``FAULTS_SEED=<n>`` reruns a test with one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from tests.support import figures


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
    return figures.reporter(pytestconfig, request.node.name, "fault suite", echo=True)
