"""Retries a failed sync as soon as the kubelet publishes new credentials.

A rotated Secret whose old keys are already revoked fails every sync until the new keys
reach the volume; the scheduler's backoff (up to ``--max-backoff``) would then delay the
first sync that could succeed. While syncs fail, and only then, this looks at the mount's
version (one ``readlink`` of ``..data``) every ``POLL_INTERVAL`` seconds and asks for the
retry at once when it changed. A healthy sidecar pays nothing: it waits on an event. The
store itself reads the new version at the start of its next operation
(``_stores/credentials.py``).
"""

from __future__ import annotations

import asyncio
import logging

from trialsync._engine.scheduler import Scheduler
from trialsync._stores import credentials

log = logging.getLogger(__name__)

#: Seconds between looks at the mount while syncs fail.
POLL_INTERVAL = 2.0


async def retry_on_new_credentials(
    directory: str, scheduler: Scheduler, interval: float = POLL_INTERVAL
) -> None:
    """Run until cancelled."""
    seen = await asyncio.to_thread(credentials.mount_identity, directory)
    while True:
        await scheduler.failing.wait()
        while scheduler.failing.is_set():
            now = await asyncio.to_thread(credentials.mount_identity, directory)
            if now != seen:
                seen = now
                log.info(
                    "new credentials in %s; retrying the failed sync now",
                    directory,
                    extra={"failures": scheduler.failures},
                )
                scheduler.retry_now()
            await asyncio.sleep(interval)
