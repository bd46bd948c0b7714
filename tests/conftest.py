"""Fixtures shared by every test: real servers on loopback, started once per session."""

import os

# gcsfs reads this when imported: against the GCS emulator, use its plain HTTP client
# (see trialsync.cli.use_plain_gcs_client_for_emulators).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = [
    "tests.support.store_fixtures",
    "tests.support.kube_fixtures",
    "tests.support.head_service",
    "tests.support.cluster_fixtures",
]
