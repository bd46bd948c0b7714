"""The sidecar's reading of the environment the operator injects (the contract's round trip)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from trialsync import contract
from trialsync._process import settings
from trialsync_operator import names
from trialsync_operator.syncconfig import ConfigView

#: The head-node token a Secret would give the sidecar.
TOKEN = "t0ken"


def sidecar_settings(container: Mapping[str, Any], root: pathlib.Path) -> settings.Settings:
    """What the sidecar makes of the environment the operator gave ``container``: values
    from Secrets are filled in, and its root is ``root`` (the pod's mount path is not a
    directory here)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["name"] == contract.HEAD_TOKEN_ENV:
            env[item["name"]] = TOKEN
    env["TRIALSYNC_ROOT"] = str(root)
    return settings.parse([], env)


def same_configuration(
    view: ConfigView, role: str, parsed: settings.Settings, namespace: str
) -> None:
    """``parsed`` is what the operator meant for a pod of ``role`` with SyncConfig ``view``."""
    config = parsed.config
    assert (config.upload_dir, config.syncer or "none") == (view.upload_dir, view.syncer)
    assert (config.sync_period, config.sync_timeout) == (view.sync_period, view.sync_timeout)
    assert config.sync_artifacts is view.sync_artifacts
    assert config.sync_on_checkpoint is view.sync_on_checkpoint
    assert parsed.layout.checkpoint_pattern == view.checkpoint_pattern
    assert parsed.layout.excludes == view.exclude
    assert parsed.checkpoint_settle == view.checkpoint_settle
    assert parsed.final_sync_timeout == view.final_sync_timeout
    assert parsed.mirror_deletes is view.mirror_deletes
    if parsed.restore:  # a pod's annotations may turn it on or off; its bound is the view's
        assert parsed.restore_timeout == view.restore_timeout
        assert bool(parsed.restore_key) != (parsed.restore_prefix is not None)
    else:
        assert parsed.restore_key is None
        assert parsed.restore_prefix is None
    assert dict(parsed.storage_options) == json.loads(view.storage_options)
    assert parsed.role == role
    assert parsed.mode is view.mode
    assert parsed.duty is contract.duty_of(view.mode, contract.Role(role))
    if parsed.duty is contract.Duty.SEND:
        assert parsed.head_url == names.head_url(view.name, namespace)
    if parsed.duty in (contract.Duty.SEND, contract.Duty.RECEIVE):
        assert parsed.head_token == TOKEN
