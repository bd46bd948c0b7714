"""The operator process: kopf (through its adapter), the webhook server, leader election, TLS
and probes together.

Shutdown is graceful for admissions: at SIGTERM this replica turns unready at once, keeps
answering admissions for ``SHUTDOWN_DELAY`` seconds while the Service drops it from its
endpoints, and only then stops. A rollout or a drain thus fails no pod creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from trialsync_operator import health, kube
from trialsync_operator.admission import injection
from trialsync_operator.admission.review import PodAdmission, operator_metrics
from trialsync_operator.kopf_adapter import handlers, runner, webhook_server
from trialsync_operator.reconcile.controller import Controller
from trialsync_operator.reconcile.leader import LeaderElector
from trialsync_operator.reconcile.missed import MissedInjections
from trialsync_operator.settings import Settings
from trialsync_operator.tls import serving as tls

log = logging.getLogger(__name__)

SHUTDOWN_DELAY = 5.0


async def run(settings: Settings, shutdown_delay: float = SHUTDOWN_DELAY) -> None:
    """Run until SIGTERM or SIGINT."""
    client = kube.Kube(kube.load_configuration())
    metrics = operator_metrics()
    controller = Controller(settings, client)
    controller.missed = MissedInjections(
        client, settings, metrics, annotations_refused=injection.annotations_refused
    )
    metrics.follow_leadership(lambda: controller.is_leader)
    admission = PodAdmission(settings, client, controller.index_ready, metrics)
    serving = tls.ServingContext(settings.cert_dir)
    webhook_server.skip_copies_for_empty_patches()
    server = webhook_server.WebhookServer(
        settings.webhook_addr, settings.webhook_port, serving, handlers.ENDPOINTS, metrics
    )

    leading: list[Callable[[], Coroutine[Any, Any, None]]] = [
        controller.lead,
        controller.missed.lead,
    ]
    if settings.pod_status:
        leading.append(controller.pod_status.run)
    background: list[Awaitable[None]] = [controller.wait_for_empty_index()]
    if settings.cert_mode == "self":
        secret_tls = tls.SecretTls(client, settings, serving)
        leading.append(lambda: secret_tls.lead(settings.cert_check_interval))
        background.append(secret_tls.follow())
    else:
        background.append(tls.follow_files(serving))

    async def lead() -> None:
        await asyncio.gather(*(fn() for fn in leading))

    if settings.leader_election:
        controller.elector = LeaderElector(
            client, settings.namespace, settings.lease_name, settings.identity, lead
        )
        background.append(controller.elector.run())
    else:
        background.append(lead())

    stopping = asyncio.Event()
    stop_flag = asyncio.Event()
    probes = await health.serve(
        settings.health_addr,
        settings.health_port,
        # Ready: the index holds every SyncConfig, a certificate is loaded and the webhook
        # listens; not while draining at shutdown.
        lambda: (
            controller.index_ready.is_set()
            and serving.ready.is_set()
            and server.listening.is_set()
            and not stopping.is_set()
        ),
        metrics,
    )
    tasks = [asyncio.ensure_future(coro) for coro in background]
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: unready now, stopping in %ss", sig.name, shutdown_delay)
        stopping.set()
        loop.call_later(shutdown_delay, stop_flag.set)

    def drain_at_signals() -> None:
        # After kopf's own signal handlers, so these replace them: drain first, then stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    try:
        await runner.run(controller, admission, server, stop_flag, drain_at_signals)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await probes.cleanup()
        await client.close()
