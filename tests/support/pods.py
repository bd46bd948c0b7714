"""Pod helpers shared by the injection tests and benchmarks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from trialsync_operator import injection
from trialsync_operator.syncconfig import ConfigView, SidecarImage, view_of

SIDECAR = SidecarImage(
    "docker.io/trialsync/sidecar:0.1.0", frozenset({"s3", "s3a", "gs", "gcs", "file"})
)
DEFAULTS = injection.Defaults(image=SIDECAR.image)


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
