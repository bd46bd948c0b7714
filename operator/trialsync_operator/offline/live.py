"""The facts of ``checks`` read from a cluster: the webhook configuration, the namespace,
the SyncConfigs, the operator's settings, whether its Service has ready endpoints, and a
pod's ``MissedInjection`` Event.

Reads only (GET and LIST), with the user's own kubeconfig: whatever the user may not
read is reported as not known rather than guessed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config

from trialsync_operator import kube, names, settings
from trialsync_operator.offline.checks import Webhook
from trialsync_operator.selectors import namespace_refusal

JsonDict = dict[str, Any]
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def load(
    kubeconfig: str | None, context: str | None
) -> tuple[kubernetes.client.Configuration, str]:
    """The client configuration and the default namespace, as kubectl finds them:
    ``kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``), else in-cluster."""
    config = kubernetes.client.Configuration()
    have_file = (
        kubeconfig or os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists()
    )
    if not have_file and context is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            pass
        else:
            own = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else ""
            return config, own or "default"
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=config
    )
    contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return config, str(namespace or "default")


class Cluster:
    """The reads ``checks`` needs, over one ``kube.Kube``."""

    def __init__(self, client: kube.Kube) -> None:
        self.kube = client
        self._syncconfigs: dict[str, dict[str, JsonDict]] = {}

    async def pod(self, namespace: str, name: str) -> JsonDict | None:
        return await self.kube.get_or_none(kube.namespaced("api/v1/pods", namespace, name))

    async def webhook_for(self, namespace: str, labels: Mapping[str, str] | None) -> Webhook | None:
        """The pods webhook of the configuration that serves ``namespace`` (several
        releases may each serve their own namespaces), else the first one; None if no
        configuration has one."""
        listed = await self.kube.get(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
        )
        found = [
            Webhook.of(config, hook)
            for config in listed.get("items") or []
            for hook in config.get("webhooks") or []
            if hook.get("name") == names.POD_WEBHOOK
        ]
        serving = [
            w
            for w in found
            if namespace_refusal(w.namespace_selector, namespace, labels or {}) is None
        ]
        return next(iter(serving or found), None)

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels; None when it cannot be read (forbidden, missing)."""
        try:
            body = await self.kube.get_or_none(kube.cluster("api/v1/namespaces", namespace))
        except kube.ApiError:
            return None
        if body is None:
            return None
        return {
            str(k): str(v) for k, v in ((body.get("metadata") or {}).get("labels") or {}).items()
        }

    async def missed_injection(self, namespace: str, uid: str) -> JsonDict | None:
        """The newest ``MissedInjection`` Event the operator recorded on the pod ``uid``;
        None when there is none or Events cannot be read."""
        selector = f"involvedObject.uid={uid},reason={names.MISSED_INJECTION_REASON}"
        try:
            listed = await self.kube.get(
                kube.namespaced("api/v1/events", namespace), params={"fieldSelector": selector}
            )
        except kube.ApiError:
            return None
        events = [e for e in listed.get("items") or [] if isinstance(e, dict)]
        return max(events, key=_event_time, default=None)

    async def syncconfigs(self, namespace: str) -> dict[str, JsonDict]:
        """The SyncConfigs of ``namespace`` by name (listed once)."""
        if namespace not in self._syncconfigs:
            listed = await self.kube.get(
                kube.namespaced(f"apis/{names.GROUP}/{names.VERSION}/{names.PLURAL}", namespace)
            )
            self._syncconfigs[namespace] = {
                str(item["metadata"]["name"]): {
                    "apiVersion": names.API_VERSION,
                    "kind": names.KIND,
                    **item,
                }
                for item in listed.get("items") or []
            }
        return self._syncconfigs[namespace]

    async def ready_endpoints(self, service: tuple[str, str]) -> int | None:
        """How many ready endpoints the Service has (0 when it does not exist); None when
        they cannot be read."""
        namespace, name = service
        try:
            if (
                await self.kube.get_or_none(kube.namespaced("api/v1/services", namespace, name))
                is None
            ):
                return 0
            slices = await self.kube.get(
                kube.namespaced("apis/discovery.k8s.io/v1/endpointslices", namespace),
                params={"labelSelector": f"kubernetes.io/service-name={name}"},
            )
        except kube.ApiError:
            return None
        return sum(
            1
            for item in slices.get("items") or []
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
        )

    async def operator_settings(
        self, service: tuple[str, str], flags: Sequence[str]
    ) -> tuple[settings.Settings, str] | None:
        """The settings of an operator pod behind ``service`` (its arguments and
        ``TRIALSYNC_OPERATOR_*`` variables, parsed by the operator's own parser), with
        ``flags`` over them, and which pod; None when none can be read."""
        namespace, name = service
        try:
            body = await self.kube.get_or_none(kube.namespaced("api/v1/services", namespace, name))
            selector = ((body or {}).get("spec") or {}).get("selector") or {}
            if not selector:
                return None
            pods = await self.kube.get(
                kube.namespaced("api/v1/pods", namespace),
                params={"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())},
            )
        except kube.ApiError:
            return None
        items = sorted(
            pods.get("items") or [],
            key=lambda p: (
                (p.get("status") or {}).get("phase") != "Running",
                p["metadata"]["name"],
            ),
        )
        for pod in items:
            argv, environ = _operator_command(pod)
            if argv is None:
                continue
            try:
                parsed = settings.parse([*argv, *flags], environ)
            except (settings.ConfigError, SystemExit):
                continue
            return parsed, f"{namespace}/{pod['metadata']['name']}"
        return None


def _operator_command(pod: Mapping[str, Any]) -> tuple[list[str] | None, dict[str, str]]:
    """The arguments and ``TRIALSYNC_OPERATOR_*`` variables of the pod's operator
    container, with ``$(VAR)`` references resolved as the kubelet does."""
    meta = pod.get("metadata") or {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        image = str(container.get("image") or "")
        if "operator" not in image and not any("trialsync-operator" in c for c in command):
            continue
        values = {"POD_NAME": str(meta.get("name")), "POD_NAMESPACE": str(meta.get("namespace"))}
        environ = {}
        for var in container.get("env") or []:
            if isinstance(var.get("value"), str):
                values[var["name"]] = var["value"]
                if var["name"].startswith(settings.ENV_PREFIX):
                    environ[var["name"]] = var["value"]
        return [_resolve(str(a), values) for a in container.get("args") or []], environ
    return None, {}


def _resolve(arg: str, values: Mapping[str, str]) -> str:
    """``$(VAR)`` in an argument replaced by the variable's value, as the kubelet does."""
    return _REFERENCE.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


def _event_time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or "")
