"""Skips, and when CI may take them.

A test skips only for one of two reasons, and says which:

- ``unavailable(reason)``: something the test needs is not on this machine (helm, Go's
  module cache, root for the local cluster, an IPv6 loopback). Under CI
  (``TRIALSYNC_REQUIRE_CLUSTER=1``, which ``.ci/run`` sets) that is a failure instead:
  ``.ci/run`` installs everything, so a missing part is a broken set-up, not a reason to
  test less.
- ``external_cluster_only(reason)``: the test cannot run against the cluster that
  ``TRIALSYNC_KUBECONFIG`` names (kind, say), because it needs this host's loopback or the
  local cluster's namespaces. It can only happen when that variable is set.

``tests/conftest.py`` fails a CI session in which any test skipped otherwise.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "TRIALSYNC_REQUIRE_CLUSTER"
EXTERNAL_ENV = "TRIALSYNC_KUBECONFIG"
#: How the reason of an ``external_cluster_only`` skip begins.
EXTERNAL_PREFIX = f"{EXTERNAL_ENV} cluster: "


def required() -> bool:
    """Whether this is CI, where every test must run."""
    return os.environ.get(REQUIRE_ENV) == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip for want of ``reason``; under CI, fail saying so."""
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def external_cluster_only(reason: str) -> NoReturn:
    """Skip a test that cannot run against ``TRIALSYNC_KUBECONFIG``'s cluster."""
    pytest.skip(EXTERNAL_PREFIX + reason)


def accepted_in_ci(reason: str) -> bool:
    """Whether CI may take a skip: only one for an external cluster, when there is one."""
    return bool(os.environ.get(EXTERNAL_ENV)) and reason.startswith(EXTERNAL_PREFIX)
