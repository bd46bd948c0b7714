"""A small asynchronous Kubernetes REST client for the operator's own writes.

The reconciler, leader election and the TLS manager send a handful of JSON requests; an
aiohttp session on the operator's event loop does that without worker threads or model
classes. Credentials come from the ``kubernetes`` package's configuration loaders
(in-cluster first, then ``$KUBECONFIG``/``~/.kube/config``), the same order kopf's login
uses, so both talk to the same cluster as the same user. An admission waits on no API
call: it answers from the SyncConfig index (the Event about a pod admitted without its
sidecar, under ``--on-config-error=admit``, is written in the background).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes.client
import kubernetes.config

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
JSON_PATCH = "application/json-patch+json"
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
#: The manager the API records for every field the operator writes (``managedFields``):
#: a server-side apply by anyone else (Argo CD, Flux, ``kubectl apply --server-side``)
#: that does not send a field the operator set, such as a webhook's caBundle, leaves it.
FIELD_MANAGER = "trialsync-operator"
WRITES = frozenset({"POST", "PUT", "PATCH"})


class ApiError(Exception):
    """The API answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_configuration() -> kubernetes.client.Configuration:
    """The client configuration: in-cluster, else from ``$KUBECONFIG``/``~/.kube/config``."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    config: kubernetes.client.Configuration = kubernetes.client.Configuration.get_default_copy()
    return config


class Kube:
    """JSON requests to the apiserver; paths are API paths (``/api/v1/...``)."""

    def __init__(self, config: kubernetes.client.Configuration) -> None:
        self._config = config
        self._server = str(config.host).rstrip("/")
        context: ssl.SSLContext | bool = False
        if config.verify_ssl:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert)
            if config.cert_file and config.key_file:
                context.load_cert_chain(config.cert_file, config.key_file)
        self._ssl = context
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        # Asked on every request: in-cluster, this re-reads the rotated token file.
        token = self._config.get_api_key_with_prefix(
            "BearerToken"
        ) or self._config.get_api_key_with_prefix("authorization")
        return {"Authorization": token} if token else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8), timeout=TIMEOUT
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> JsonDict:
        """Send one request; the decoded answer, or ApiError with the API's message
        (OSError when the API cannot be reached, TimeoutError when it does not answer)."""
        headers = self._headers()
        if method in WRITES:
            params = {"fieldManager": FIELD_MANAGER, **(params or {})}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            async with self._client().request(
                method, self._server + path, data=data, headers=headers, params=params
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientError as exc:
            # Some of aiohttp's errors (a dropped connection) are no OSError: callers
            # handle one vocabulary, ApiError, OSError and TimeoutError.
            raise ConnectionError(f"{method} {path}: {exc!r}") from exc
        if status >= 400:
            raise ApiError(status, _message(method, path, status, text))
        return json.loads(text) if text else {}

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonDict:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> JsonDict | None:
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: JsonDict) -> JsonDict:
        return await self.request("POST", path, body)

    async def replace(self, path: str, body: JsonDict) -> JsonDict:
        return await self.request("PUT", path, body)

    async def merge_patch(self, path: str, patch: JsonDict) -> JsonDict:
        return await self.request("PATCH", path, patch, MERGE_PATCH)

    async def json_patch(self, path: str, ops: list[JsonDict]) -> JsonDict:
        return await self.request("PATCH", path, ops, JSON_PATCH)

    async def delete(self, path: str, precondition_uid: str | None = None) -> None:
        body = {"preconditions": {"uid": precondition_uid}} if precondition_uid else None
        try:
            await self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def watch(
        self, path: str, params: Mapping[str, str], read_timeout: float = 330.0
    ) -> AsyncIterator[JsonDict]:
        """The events of a watch (``watch=1`` is added), one decoded line each, until the
        apiserver ends it (its ``timeoutSeconds``). On a connection of its own, so a long
        watch never holds one of the connections the writes share."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                async with session.get(
                    self._server + path,
                    headers=self._headers(),
                    params={**params, "watch": "1"},
                ) as response:
                    if response.status >= 400:
                        text = await response.text()
                        raise ApiError(
                            response.status, _message("GET", path, response.status, text)
                        )
                    # Split by hand: readline() refuses a line past 128 KiB (a big pod).
                    buffer = b""
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            if line.strip():
                                yield json.loads(line)
            except aiohttp.ClientError as exc:
                raise ConnectionError(f"watch {path}: {exc!r}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def namespaced(kind_path: str, namespace: str, name: str = "") -> str:
    """``/api/v1/namespaces/{ns}/secrets[/{name}]`` from ``api/v1/secrets``-style input."""
    group, _, plural = kind_path.rpartition("/")
    base = f"/{group}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{quote(name, safe='')}" if name else base


def cluster(kind_path: str, name: str = "") -> str:
    return f"/{kind_path}/{quote(name, safe='')}" if name else f"/{kind_path}"


def _message(method: str, path: str, status: int, text: str) -> str:
    try:
        detail = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        detail = text[:300]
    return f"{method} {path}: HTTP {status}: {detail}"
