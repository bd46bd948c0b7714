"""The admission webhook server kopf runs its handlers through, and our patches to its answer.

A webhook server, to kopf, is any callable that takes kopf's ``WebhookFn`` and yields
the client config (``kopf.WebhookServerProtocol``). Ours differs from kopf's own
``kopf.WebhookServer`` in three ways:

- The certificate is swapped into the live SSLContext (``ServingContext``): kopf restarts
  its listener when the files change, which refuses connections for a moment, and an
  admission under ``failurePolicy: Fail`` would fail.
- Pods made by controllers reach the webhook without ``metadata.namespace`` in their
  body; the namespace of the admission request is filled in before kopf's handlers see it.
- A body is checked before kopf sees it (``admission.envelope``): anything but an
  AdmissionReview of the resource and operations the path reviews (not JSON, too large or
  too deep, the wrong apiVersion, kind, resource or operation, a field missing or of the
  wrong type) gets HTTP 400 with a one-line message saying what is wrong, never a 5xx; a
  path that is no endpoint gets 404.
- A handler may answer with a JSONPatch it computed itself (``respond_with_patch``):
  kopf would build one by deep-copying and diffing the whole pod, which took 0.6 ms of the
  about 1.5 ms of CPU each admission cost; the injector knows exactly what it adds.

One use of kopf's private behaviour remains, here alone: kopf deep-copies the reviewed
object to diff it against its patch even when that patch is empty
(``Patch.as_json_patch`` copies before it checks), another 0.6 ms a pod.
``skip_copies_for_empty_patches`` makes an empty patch return at once.
``tests/unit/test_kopf_adapter.py`` fails loudly when kopf changes what this relies on.

The webhook configurations are ours (the chart's), not kopf's managed ones, so the client
config this server yields to kopf is not used to write any.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import kopf

from trialsync_operator.admission import envelope
from trialsync_operator.metrics import Metrics
from trialsync_operator.tls.serving import ServingContext

log = logging.getLogger(__name__)


_PATCHES: contextvars.ContextVar[list[list[dict[str, Any]]] | None] = contextvars.ContextVar(
    "trialsync_admission_patches", default=None
)


def respond_with_patch(ops: list[dict[str, Any]]) -> None:
    """From an admission handler: add ``ops`` (RFC 6902) to this admission's answer."""
    patches = _PATCHES.get()
    if patches is None:
        raise RuntimeError("respond_with_patch() outside an admission review")
    patches.append(ops)


async def review_with_patches(fn: kopf.WebhookFn, data: Any, **kwargs: Any) -> Any:
    """Run kopf's review of ``data``; add the handlers' own patches to an allowing answer."""
    patches: list[list[dict[str, Any]]] = []
    token = _PATCHES.set(patches)
    try:
        response = await fn(with_request_namespace(data), **kwargs)
    finally:
        _PATCHES.reset(token)
    answer = response.get("response") if isinstance(response, dict) else None
    if patches and isinstance(answer, dict) and answer.get("allowed"):
        if "patch" in answer:
            raise RuntimeError("a handler patched through kopf and through respond_with_patch")
        ops = [op for batch in patches for op in batch]
        answer["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        answer["patchType"] = "JSONPatch"
    return response


#: What ``skip_copies_for_empty_patches`` relies on: ``kopf.Patch.as_json_patch(self,
#: body=None)``, and a patch with no changes and no ``fns`` being empty.
AS_JSON_PATCH_PARAMETERS = ("self", "body")


def skip_copies_for_empty_patches() -> None:
    """Make kopf's ``Patch.as_json_patch`` return ``[]`` for an empty patch before it
    deep-copies the object (the answer is the same; kopf 1.45 copies first).

    Raises RuntimeError if kopf no longer has the method this replaces, with those
    parameters: the operator then refuses to start rather than run on a guess."""
    original = kopf.Patch.as_json_patch
    if getattr(original, "_trialsync", False):
        return
    parameters = tuple(inspect.signature(original).parameters)
    if parameters != AS_JSON_PATCH_PARAMETERS or not hasattr(kopf.Patch(), "fns"):
        raise RuntimeError(
            f"kopf {kopf.__version__ if hasattr(kopf, '__version__') else ''} changed "
            f"Patch.as_json_patch{parameters}: review kopf_adapter.webhook_server"
        )

    def as_json_patch(self: kopf.Patch, body: Any = None) -> Any:
        if not self and not self.fns:
            return []
        return original(self, body)

    as_json_patch._trialsync = True  # type: ignore[attr-defined]
    as_json_patch.__wrapped__ = original  # type: ignore[attr-defined]
    kopf.Patch.as_json_patch = as_json_patch  # type: ignore[method-assign]


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


class WebhookServer:
    """Serves kopf's admission handlers on ``addr:port`` with ``serving``'s certificate
    (a ``kopf.WebhookServerProtocol``), one path per ``endpoints`` entry (the handler id)."""

    def __init__(
        self,
        addr: str,
        port: int,
        serving: ServingContext,
        endpoints: Mapping[str, envelope.Endpoint],
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.addr = addr
        self.port = port
        self.serving = serving
        self.endpoints = dict(endpoints)
        self.listening = asyncio.Event()

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        latency = (
            {path: self.metrics.admission_duration.labels(path) for path in self.endpoints}
            if self.metrics is not None
            else {}
        )

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            webhook = request.match_info.get("id", "")
            endpoint = self.endpoints.get(webhook)
            if endpoint is None:
                paths = ", ".join(f"/{p}" for p in sorted(self.endpoints))
                return _refuse(404, f"no webhook at {request.path}: the webhooks are {paths}")
            histogram = latency.get(webhook)
            if histogram is None:
                return await answer(request, endpoint)
            started = time.perf_counter()
            try:
                return await answer(request, endpoint)
            finally:
                histogram.observe(time.perf_counter() - started)

        async def answer(
            request: aiohttp.web.Request, endpoint: envelope.Endpoint
        ) -> aiohttp.web.Response:
            webhook = request.match_info.get("id", "")
            encoding = request.headers.get("Content-Encoding", "identity").lower()
            if encoding != "identity":
                # The listener does not decompress (auto_decompress=False): the apiserver
                # never compresses a review, and a broken stream would fail below the handler.
                return _refuse(400, f"Content-Encoding {encoding}: send the review uncompressed")
            try:
                body = await request.read()
                data = envelope.parse(body, request.content_type)
                envelope.check(data, endpoint)
            except aiohttp.web.HTTPRequestEntityTooLarge:
                return _refuse(400, f"the body is larger than {envelope.MAX_BODY_BYTES} bytes")
            except aiohttp.web_protocol.RequestPayloadError as exc:
                return _refuse(400, f"the body cannot be read: {exc}")
            except envelope.Malformed as exc:
                return _refuse(400, str(exc))
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            try:
                response = await review_with_patches(
                    fn, data, webhook=webhook, headers=dict(request.headers), sslpeer=peer
                )
            except Exception as exc:  # kopf's errors about the review itself (not the pod)
                log.warning("admission review failed: %r", exc)
                return _refuse(400, f"the AdmissionReview cannot be reviewed: {exc!r}")
            return aiohttp.web.json_response(response)

        # No certificate, no listener: the apiserver gets a refused connection (and the
        # pod's readiness probe keeps the Service from routing here) until one is loaded.
        await self.serving.ready.wait()
        app = aiohttp.web.Application(client_max_size=envelope.MAX_BODY_BYTES)
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(
            app, handle_signals=False, access_log=None, auto_decompress=False
        )
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


def _refuse(status: int, message: str) -> aiohttp.web.Response:
    """An error answer: the message as one line of text (not in the reason phrase, which
    may hold neither a line break nor every character)."""
    log.info("malformed admission request refused", extra={"status": status, "why": message})
    return aiohttp.web.Response(status=status, text=message.replace("\n", " ") + "\n")
