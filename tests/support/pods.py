"""Pod helpers shared by the injection tests and benchmarks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from trialsync_operator import names
from trialsync_operator.admission import injection
from trialsync_operator.settings import DEFAULT_IMAGE, DEFAULT_SCHEMES, Defaults
from trialsync_operator.syncconfig import ConfigView, SidecarImage, view_of

#: The custom sidecar images the tests' SyncConfigs name (tests/support/generated.py too):
#: the operators the tests run allow them (``--allowed-sidecar-image``), as an admin would.
TEST_ALLOWED_IMAGES = ("me/*", "r:5000/*", "registry.example.com/trialsync-*")
#: The operator's defaults: its sidecar image and the schemes that image serves.
SIDECAR = SidecarImage(DEFAULT_IMAGE, frozenset(DEFAULT_SCHEMES), allowed=TEST_ALLOWED_IMAGES)
DEFAULTS = Defaults(image=SIDECAR.image)


def syncconfig(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A SyncConfig named ``name``; the namespace is the one it is applied in."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name},
        "spec": dict(spec),
    }


def opted_in_pod(
    name: str, config: str, *, labelled: bool = True, mount_path: str = "/r", **annotations: str
) -> dict[str, Any]:
    """A trainer pod that names SyncConfig ``config``; ``labelled=False`` leaves off the
    opt-in label, so the webhook never sees it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {names.INJECT_LABEL: "true"} if labelled else {"app": "trainer"},
            "annotations": {
                names.CONFIG_ANNOTATION: config,
                names.MOUNT_PATH_ANNOTATION: mount_path,
                **annotations,
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 60,
            "containers": [{"name": "trainer", "image": "example.com/trainer:1"}],
        },
    }


def apply(pod: Mapping[str, Any], patch: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pod as the apiserver stores it after the webhook's patch."""
    out = copy.deepcopy(dict(pod))
    if patch is None:
        return out
    meta = out.setdefault("metadata", {})
    meta["labels"] = patch["labels"]
    meta["annotations"] = patch["annotations"]
    spec = out.setdefault("spec", {})
    for field in ("initContainers", "containers", "volumes"):
        if field in patch:
            spec[field] = patch[field]
    return out


def lookup_for(*configs: Mapping[str, Any]) -> injection.Lookup:
    views: dict[tuple[str, str], ConfigView] = {}
    for config in configs:
        view = view_of(config, SIDECAR)
        views[view.key] = view
    return lambda namespace, name: views.get((namespace, name))


def sidecars(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return [
        c
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        if c.get("name") == "trialsync-sidecar"
    ]
