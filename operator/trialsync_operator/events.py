"""core/v1 Events about SyncConfigs and pods, written in the background, never retried."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from trialsync_operator import kube, names

log = logging.getLogger(__name__)

EVENTS = "api/v1/events"
JsonDict = dict[str, Any]


def now() -> str:
    """The time as the API's timestamps (RFC 3339, seconds) write it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    namespace: str, involved: Mapping[str, Any], type_: str, reason: str, message: str
) -> JsonDict:
    """A core/v1 Event about ``involved`` (apiVersion, kind, name and, if known, uid)."""
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{involved.get('name') or 'trialsync'}.",
            "namespace": namespace,
        },
        "involvedObject": {**involved, "namespace": namespace},
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": names.MANAGED_BY},
        "reportingComponent": f"{names.GROUP}/operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def record_event(client: kube.Kube, body: JsonDict) -> None:
    """Create the Event ``body``; a failure is worth a log line, never a retry storm."""
    namespace = body["metadata"]["namespace"]
    try:
        await client.create(kube.namespaced(EVENTS, namespace), body)
    except (kube.ApiError, OSError, TimeoutError) as exc:
        log.warning("could not record an Event: %s", exc)
