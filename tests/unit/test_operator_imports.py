"""The operator needs the contract with the sidecar, never the sync engine or a storage
client (import-linter's contracts in pyproject.toml check the imports themselves; this
checks what a running operator actually loads)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("fsspec", "botocore", "aiobotocore", "s3fs", "gcsfs")
# The kubernetes config loader imports google.auth; the storage client is google.cloud.
STORAGE = ("google.cloud",)
ENGINE = (
    "trialsync._engine.engine",
    "trialsync._stores.fsspec_store",
    "trialsync.syncer",
    "trialsync._head.store",
    "trialsync._stores.s3_client",
)


def _loaded(statement: str) -> list[str]:
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out))


def test_importing_the_operator_package_loads_no_client_at_all() -> None:
    modules = _loaded("import trialsync_operator")
    assert not [m for m in modules if m.split(".")[0] in (*HEAVY, "aiohttp", "kopf", "kubernetes")]
    assert not [m for m in modules if m.startswith("trialsync.")]


def test_the_whole_operator_loads_the_contract_but_no_engine_or_storage_client() -> None:
    modules = _loaded("import trialsync_operator.app, trialsync_operator.cli")
    ours = {m for m in modules if m == "trialsync" or m.startswith("trialsync.")}
    assert ours == {"trialsync", "trialsync.contract", "trialsync.setting_kinds", "trialsync.logs"}
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert not [m for m in modules if m.startswith(STORAGE)]
    assert not [m for m in modules if m in ENGINE]
