"""Which running pods still use a SyncConfig's head-node service, and the finalizer that
keeps the service for them.

A worker's sidecar sends to the head Service its pod was injected with, and a head's
sidecar serves under its token Secret, for as long as the pod lives: a SyncConfig that is
deleted, or no longer syncs to the head node, must not take either away from them. The
finalizer holds a deleted SyncConfig (and so, through the garbage collector, its Service
and Secret) until the last such pod has finished; the reconciler keeps the Service while
one runs after a change of mode.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trialsync.contract import Mode
from trialsync_operator import names

#: The finalizer on a SyncConfig whose head-node service pods use (or may use).
FINALIZER = f"{names.GROUP}/head-in-use"
#: Phases of a pod that has finished: its sidecar sends nothing any more.
_FINISHED = frozenset({"Succeeded", "Failed"})
JsonDict = dict[str, Any]


def uses_head(pod: Mapping[str, Any], config_uid: str) -> bool:
    """Whether ``pod`` is alive and its sidecar was injected to send to, or serve as, the
    head-node service of the SyncConfig whose uid is ``config_uid``.

    A pod whose status annotation names no mode (injected by an earlier operator) counts
    as a user: keeping the service a little longer is the safe mistake.
    """
    if (_mapping(pod.get("status")).get("phase")) in _FINISHED:
        return False
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    try:
        injected = json.loads(str(annotations.get(names.STATUS_ANNOTATION, "")))
    except ValueError:
        return False
    if not isinstance(injected, Mapping) or injected.get("uid") != config_uid:
        return False
    return bool(injected.get("mode", Mode.HEAD.value) == Mode.HEAD.value)


def head_users(pods: Iterable[Mapping[str, Any]], config_uid: str) -> tuple[str, ...]:
    """The names of the pods that use the head-node service, sorted."""
    return tuple(
        sorted(
            str(_mapping(p.get("metadata")).get("name") or "?")
            for p in pods
            if uses_head(p, config_uid)
        )
    )


def shown(pods: Sequence[str], most: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 3 more``, for a condition's message."""
    if len(pods) <= most:
        return ", ".join(pods)
    return f"{', '.join(pods[:most])} and {len(pods) - most} more"


def add_finalizer(finalizers: Sequence[str]) -> list[JsonDict]:
    """The JSON patch that adds the finalizer to a list that lacks it."""
    if not finalizers:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    return [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]


def remove_finalizer(finalizers: Sequence[str]) -> list[JsonDict]:
    """The JSON patch that removes the finalizer, tested in place so that a list changed
    meanwhile makes the patch fail rather than remove another controller's entry."""
    index = list(finalizers).index(FINALIZER)
    path = f"/metadata/finalizers/{index}"
    return [{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
