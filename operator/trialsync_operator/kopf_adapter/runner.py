"""kopf's tasks, configured for this operator: our webhook server and configurations, no
peering, no posting of log lines as Events, no CRD scanning."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import kopf

from trialsync_operator import names
from trialsync_operator.admission.review import PodAdmission
from trialsync_operator.kopf_adapter import handlers
from trialsync_operator.kopf_adapter.webhook_server import WebhookServer
from trialsync_operator.reconcile.controller import Controller


def kopf_settings(server: WebhookServer) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.admission.server = server
    settings.admission.managed = None  # the chart's webhook configurations, not kopf's
    settings.peering.standalone = True  # kopf's peering would pause a standby's index
    settings.posting.enabled = False  # Events are ours, about validity, not log lines
    settings.scanning.disabled = True  # the CRD is installed first: no CRD watch (nor RBAC)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Pods are watched for missed injections: only those that opt in, filtered by the
    # apiserver (kopf's own label filter would stream every pod of the cluster here).
    settings.watching.label_selectors[_is_pods] = f"{names.INJECT_LABEL}=true"
    return settings


def quiet_pod_events(record: logging.LogRecord) -> bool:
    """Drop kopf's line for each opted-in pod's event ("Handler 'opted-in-pods'
    succeeded."): several per pod, and the handler only notes the pod. Its failures stay."""
    return record.levelno >= logging.WARNING or not record.getMessage().startswith(
        f"Handler '{handlers.POD_EVENTS}'"
    )


def _is_pods(resource: kopf.Resource) -> bool:
    return resource.group == "" and resource.plural == "pods"


async def run(
    controller: Controller,
    admission: PodAdmission,
    server: WebhookServer,
    stop_flag: asyncio.Event,
    after_start: Callable[[], None],
) -> None:
    """Run kopf until ``stop_flag`` is set. ``after_start`` runs once kopf has set its own
    signal handlers, so that handlers it sets replace kopf's."""
    settings = controller.settings
    registry = handlers.build_registry(controller, admission)
    logging.getLogger("kopf.objects").addFilter(quiet_pod_events)
    kopf.on.login(registry=registry)(kopf.login_via_client)
    root_tasks = await kopf.spawn_tasks(
        registry=registry,
        settings=kopf_settings(server),
        standalone=True,
        # Our identity: kopf would otherwise ask getpass.getuser(), which fails for a uid
        # with no passwd entry (any runAsUser).
        identity=cast(Any, settings.identity),
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        stop_flag=stop_flag,
    )
    after_start()
    await kopf.run_tasks(root_tasks)
