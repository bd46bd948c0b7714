"""The sidecar's reading of the environment the operator injects (the contract's round trip)."""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from trialsync import contract
from trialsync._process import settings
from trialsync_operator import names
from trialsync_operator.syncconfig import ConfigView
from trialsync_operator.tls import certificates

#: The head-node token a Secret would give the sidecar.
TOKEN = "t0ken"


@functools.cache
def head_secret_files() -> dict[str, bytes]:
    """What a head-node Secret holds, by key (a token and a real TLS identity)."""
    material = certificates.new_material(
        ["localhost"], datetime.timedelta(days=1), datetime.datetime.now(datetime.UTC)
    )
    return {
        names.HEAD_TOKEN_KEY: TOKEN.encode(),
        names.HEAD_CERT_KEY: material.cert,
        names.HEAD_KEY_KEY: material.key,
        names.HEAD_CA_KEY: material.ca_bundle,
    }


def sidecar_settings(container: Mapping[str, Any], root: pathlib.Path) -> settings.Settings:
    """What the sidecar makes of the environment the operator gave ``container``: the
    files of the head-node Secret that it names are written beside ``root`` (as the
    kubelet would mount them), and its root is ``root`` (the pod's mount path is not a
    directory here)."""
    mounted = root.with_name(root.name + "-head-secret")
    env = {}
    for item in container["env"]:
        if "value" not in item:
            continue  # from elsewhere (a web-identity webhook's): not the sidecar's to read
        value = item["value"]
        if value.startswith(contract.HEAD_SECRET_MOUNT + "/"):
            key = value.removeprefix(contract.HEAD_SECRET_MOUNT + "/")
            mounted.mkdir(exist_ok=True)
            (mounted / key).write_bytes(head_secret_files()[key])
            value = str(mounted / key)
        env[item["name"]] = value
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
    # The head's service uploads nothing: retention and the rate limit are the senders'.
    receives = parsed.duty is contract.Duty.RECEIVE
    assert parsed.keep_checkpoints == (None if receives else view.keep_checkpoints)
    if not receives and parsed.bandwidth_limit != (view.bandwidth_limit or None):
        assert parsed.bandwidth_limit is not None  # a pod's annotation set it
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
        assert parsed.head_url.startswith("https://")
        assert parsed.head_ca_file is not None
        assert (parsed.receiver_cert_file, parsed.receiver_key_file) == (None, None)
    if parsed.duty is contract.Duty.RECEIVE:
        assert parsed.receiver_cert_file is not None
        assert parsed.receiver_key_file is not None
        assert parsed.head_ca_file is None
    if parsed.duty in (contract.Duty.SEND, contract.Duty.RECEIVE):
        assert parsed.head_token == TOKEN
