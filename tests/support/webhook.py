"""Local HTTPS admission webhooks for tests against the local control plane.

:class:`WebhookServer` serves AdmissionReview v1 on ``https://127.0.0.1:<free port>`` with a
certificate from a throwaway trustme CA; :func:`mutating_webhook_configuration` builds the
MutatingWebhookConfiguration that points kube-apiserver at it (``url`` clientConfig plus the
CA bundle). Only a control plane on this machine can call it: a kind cluster's apiserver
runs in a container where 127.0.0.1 is not this host.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

#: Takes the AdmissionReview ``request`` object, returns the ``response`` object (without
#: ``uid``, which the server copies from the request).
AdmissionHandler = Callable[[dict[str, Any]], dict[str, Any]]


class WebhookTLS:
    """A CA and a serving certificate for 127.0.0.1 (and localhost)."""

    def __init__(self) -> None:
        self.ca = trustme.CA(organization_name="trialsync-test-webhook")
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")

    @property
    def ca_bundle(self) -> str:
        """Base64 of the CA PEM, as ``clientConfig.caBundle`` wants it."""
        return base64.b64encode(self.ca.cert_pem.bytes()).decode()

    def server_context(self) -> ssl.SSLContext:
        """A server-side SSLContext presenting the serving certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(ctx)
        return ctx


def json_patch(ops: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An allowing admission response that applies the JSONPatch ``ops``."""
    return {
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(list(ops)).encode()).decode(),
    }


class WebhookServer:
    """A threaded HTTPS AdmissionReview v1 server on 127.0.0.1; use as a context manager.

    Every request's AdmissionReview ``request`` is appended to :attr:`requests` so tests
    can assert that the apiserver really called it.
    """

    def __init__(self, handler: AdmissionHandler, tls: WebhookTLS | None = None) -> None:
        self.tls = tls or WebhookTLS()
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                review = json.loads(self.rfile.read(length))
                request = review["request"]
                server.requests.append(request)
                try:
                    response = dict(server.handler(request))
                except Exception as e:  # a failing handler must surface, not hang the apiserver
                    response = {"allowed": False, "status": {"code": 500, "message": repr(e)}}
                response["uid"] = request["uid"]
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": response,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean; requests are recorded instead

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.socket = self.tls.server_context().wrap_socket(
            self._httpd.socket, server_side=True
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str = "/mutate") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def mutating_webhook_configuration(
    name: str,
    *,
    url: str,
    ca_bundle: str,
    rules: Sequence[dict[str, Any]] | None = None,
    namespace_selector: dict[str, Any] | None = None,
    object_selector: dict[str, Any] | None = None,
    failure_policy: str = "Fail",
) -> dict[str, Any]:
    """A MutatingWebhookConfiguration calling ``url`` (default rule: pod CREATE).

    Scope it with ``namespace_selector``/``object_selector``: with ``failure_policy="Fail"``
    an unscoped webhook breaks every matching request once its server is gone.
    """
    webhook: dict[str, Any] = {
        "name": f"{name}.trialsync.test",
        "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": list(
            rules
            or [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ]
        ),
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": 10,
    }
    if namespace_selector is not None:
        webhook["namespaceSelector"] = namespace_selector
    if object_selector is not None:
        webhook["objectSelector"] = object_selector
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }
