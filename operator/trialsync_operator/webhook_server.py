"""kopf's WebhookServer, serving our own webhook configurations with a hot-swapped certificate.

Two changes to kopf's server. First, kopf restarts its listener when the certificate
files change, which refuses connections for a moment: an admission under
``failurePolicy: Fail`` would fail. Here the certificate is loaded into the live
SSLContext instead, so rotation never closes the listener. Second, pods made by
controllers reach the webhook without ``metadata.namespace`` in their body; the
namespace of the admission request is filled in before kopf's handlers see the pod.

The webhook configurations are ours (the chart's), not kopf's managed ones, so the client
config this server yields to kopf is not used to write any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp.web
import kopf

from trialsync_operator.tls import ServingContext

log = logging.getLogger(__name__)


def with_request_namespace(request: Any) -> Any:
    """Give the reviewed object the admission request's namespace if it has none."""
    payload = request.get("request")
    if not isinstance(payload, dict):
        return request
    namespace = payload.get("namespace")
    for key in ("object", "oldObject"):
        body = payload.get(key)
        if isinstance(body, dict) and namespace:
            meta = body.setdefault("metadata", {})
            if isinstance(meta, dict) and not meta.get("namespace"):
                meta["namespace"] = namespace
    return request


class WebhookServer(kopf.WebhookServer):
    """Serves kopf's admission handlers on ``addr:port`` with ``serving``'s certificate."""

    def __init__(self, addr: str, port: int, serving: ServingContext) -> None:
        super().__init__(addr=addr, port=port)
        self.serving = serving
        self.listening = asyncio.Event()

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def review(data: Any, **kwargs: Any) -> Any:
            return await fn(with_request_namespace(data), **kwargs)

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            response: aiohttp.web.Response = await self._serve(
                cast(kopf.WebhookFn, review), request
            )
            return response

        # No certificate, no listener: the apiserver gets a refused connection (and the
        # pod's readiness probe keeps the Service from routing here) until one is loaded.
        await self.serving.ready.wait()
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, self.port, ssl_context=self.serving.context
            )
            await site.start()
            self.listening.set()
            log.info("admission webhooks listening", extra={"addr": self.addr, "port": self.port})
            yield kopf.WebhookClientConfig(url=f"https://{self.addr or 'localhost'}:{self.port}")
            await asyncio.Event().wait()  # serve until cancelled; certificates swap in place
        finally:
            self.listening.clear()
            await runner.cleanup()
