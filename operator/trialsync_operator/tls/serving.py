"""The webhook certificate at run time: issued, published, followed and reloaded.

Two modes. ``self`` (the default, as the Vault injector does it): the leader keeps a CA
and a serving certificate in a Secret, renews them well before expiry and keeps the
caBundle of both webhook configurations right; every replica follows the Secret and
reloads its listener's certificate in place. ``files``: the certificate comes from
mounted files (cert-manager), reloaded when they change; cert-manager's cainjector keeps
the caBundle.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from trialsync_operator import kube
from trialsync_operator.settings import Settings
from trialsync_operator.tls import certificates

log = logging.getLogger(__name__)

SECRETS = "api/v1/secrets"
MUTATING = "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VALIDATING = "apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
#: Annotate the TLS Secret with this (any value) to have the leader re-issue the certificate.
ROTATE_ANNOTATION = "trialsync.io/rotate"
CA_SINCE_ANNOTATION = "trialsync.io/ca-since"
FOLLOW_INTERVAL = 5.0
LEADER_INTERVAL = 30.0


def hosts(settings: Settings) -> list[str]:
    """The names the serving certificate must carry: the Service's, then extras."""
    service, namespace = settings.service, settings.namespace
    names = [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    return names + [h for h in settings.cert_hosts if h not in names]


class ServingContext:
    """The listener's SSLContext; ``load`` swaps its certificate for new handshakes, while
    connections already open keep theirs. ``ready`` is set once a certificate is loaded."""

    def __init__(self, cert_dir: str) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.cert_path = os.path.join(cert_dir, "tls.crt")
        self.key_path = os.path.join(cert_dir, "tls.key")
        self.ready = asyncio.Event()
        self.fingerprint = ""

    def load(self) -> bool:
        """Load the files if they changed; True if a new certificate is now served.

        On the event loop only: it sets ``ready``, an asyncio.Event."""
        try:
            cert = Path(self.cert_path).read_bytes()
            key = Path(self.key_path).read_bytes()
        except FileNotFoundError:
            return False
        fingerprint = _fingerprint(cert, key)
        if fingerprint == self.fingerprint:
            return False
        self.context.load_cert_chain(self.cert_path, self.key_path)
        self.fingerprint = fingerprint
        self.ready.set()
        log.info(
            "serving certificate loaded",
            extra={"not_after": certificates.not_after(cert).isoformat()},
        )
        return True

    async def serve(self, cert: bytes, key: bytes) -> None:
        """Serve this pair: unless it is served already, write it (atomically, temp +
        rename, in a thread) and load it."""
        if _fingerprint(cert, key) == self.fingerprint:
            return
        await asyncio.to_thread(self._write, cert, key)
        self.load()

    def _write(self, cert: bytes, key: bytes) -> None:
        os.makedirs(os.path.dirname(self.cert_path), exist_ok=True)
        for path, data in ((self.key_path, key), (self.cert_path, cert)):
            temp = f"{path}.tmp"
            with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
            os.replace(temp, path)


def _fingerprint(cert: bytes, key: bytes) -> str:
    return hashlib.sha256(cert + key).hexdigest()


async def follow_files(serving: ServingContext, interval: float = FOLLOW_INTERVAL) -> None:
    """``files`` mode: reload the mounted certificate whenever it changes."""
    while True:
        try:
            serving.load()
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load the webhook certificate: %s", exc)
        await asyncio.sleep(interval)


@dataclasses.dataclass
class SecretTls:
    """``self`` mode: the certificate kept in ``settings.tls_secret``."""

    client: kube.Kube
    settings: Settings
    serving: ServingContext
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)

    @property
    def _path(self) -> str:
        return kube.namespaced(SECRETS, self.settings.namespace, self.settings.tls_secret)

    async def follow(self, interval: float = FOLLOW_INTERVAL) -> None:
        """Every replica: serve what the Secret holds, reloading when it changes."""
        while True:
            try:
                secret = await self.client.get_or_none(self._path)
                material = _material(secret)
                if material is not None:
                    await self.serving.serve(material.cert, material.key)
            except (kube.ApiError, OSError, ssl.SSLError) as exc:
                log.warning("cannot follow the webhook certificate: %s", exc)
            await asyncio.sleep(interval)

    async def lead(self, interval: float = LEADER_INTERVAL) -> None:
        """The leader: keep the Secret valid and the caBundles right, checking often."""
        while True:
            try:
                await self.ensure()
            except (kube.ApiError, OSError) as exc:
                log.error("cannot renew the webhook certificate: %s", exc)
            await asyncio.sleep(interval)

    async def ensure(self) -> None:
        """Create or renew the material if needed, then make every caBundle match it."""
        secret = await self.client.get_or_none(self._path)
        material = _material(secret)
        annotations = dict(((secret or {}).get("metadata") or {}).get("annotations") or {})
        now = self.now()
        validity = datetime.timedelta(days=self.settings.cert_validity_days)
        wanted = hosts(self.settings)
        if material is None:
            material, reason = certificates.new_material(wanted, validity, now), "none exists"
            annotations[CA_SINCE_ANNOTATION] = now.isoformat()
        else:
            renewed = certificates.renew(
                material,
                wanted,
                validity,
                datetime.timedelta(days=self.settings.cert_rotate_before_days),
                now,
                force=ROTATE_ANNOTATION in annotations,
                ca_since=_parse_time(annotations.get(CA_SINCE_ANNOTATION)),
            )
            if renewed is None:
                await self._sync_ca_bundles(material.ca_bundle)
                return
            if renewed[0].ca_key != material.ca_key:
                annotations[CA_SINCE_ANNOTATION] = now.isoformat()
            material, reason = renewed
        annotations.pop(ROTATE_ANNOTATION, None)
        # The CA first: a certificate is served only after every bundle trusts its CA.
        await self._sync_ca_bundles(material.ca_bundle)
        await self._store(secret, material, annotations)
        log.info("webhook certificate issued", extra={"reason": reason, "hosts": wanted})

    async def _store(
        self,
        secret: kube.JsonDict | None,
        material: certificates.Material,
        annotations: dict[str, str],
    ) -> None:
        data = {k: base64.b64encode(v).decode() for k, v in material.as_secret_data().items()}
        body: kube.JsonDict = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.settings.tls_secret,
                "annotations": annotations,
                "labels": {"app.kubernetes.io/managed-by": "trialsync-operator"},
            },
            "data": data,
        }
        if secret is None:
            await self.client.create(kube.namespaced(SECRETS, self.settings.namespace), body)
            return
        # resourceVersion: a concurrent writer makes this fail (409) and the next pass retries.
        body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
        body["metadata"]["labels"] = {
            **((secret["metadata"].get("labels")) or {}),
            **body["metadata"]["labels"],
        }
        await self.client.replace(self._path, body)

    async def _sync_ca_bundles(self, bundle: bytes) -> None:
        encoded = base64.b64encode(bundle).decode()
        for kind, name in (
            (MUTATING, self.settings.mutating_webhook),
            (VALIDATING, self.settings.validating_webhook),
        ):
            path = kube.cluster(kind, name)
            config = await self.client.get_or_none(path)
            if config is None:
                log.debug("no %s named %s: its caBundle is not kept", kind.rsplit("/", 1)[1], name)
                continue
            webhooks = config.get("webhooks") or []
            stale = [
                w for w in webhooks if (w.get("clientConfig") or {}).get("caBundle") != encoded
            ]
            if not stale:
                continue
            for webhook in stale:
                webhook.setdefault("clientConfig", {})["caBundle"] = encoded
            # An update of the object read, resourceVersion included: only the caBundles
            # change, and the API records them as the operator's (kube.FIELD_MANAGER), so
            # an apply of the chart's manifests, which carry no caBundle, keeps them. A
            # conflict with a concurrent writer (409): the next pass retries.
            with contextlib.suppress(kube.ApiError):
                await self.client.replace(path, config)
                log.info("caBundle updated", extra={"configuration": name, "webhooks": len(stale)})


def _material(secret: kube.JsonDict | None) -> certificates.Material | None:
    if secret is None:
        return None
    try:
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    except ValueError:
        return None
    return certificates.Material.from_secret_data(data)


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
