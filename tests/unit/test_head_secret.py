"""The head-node Secret (seed scenario 3) and what of it each sidecar mounts.

The Secret holds the token and the head's TLS identity; the head's sidecar mounts the
token, its certificate and its key, a worker's the token and the CA certificate alone.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.pods import DEFAULTS, apply, lookup_for, opted_in_pod, sidecars, syncconfig
from trialsync import contract
from trialsync_operator import names
from trialsync_operator.admission import injection
from trialsync_operator.reconcile import reconciler
from trialsync_operator.syncconfig import ConfigView
from trialsync_operator.tls import certificates

NAMESPACE = "tune"
UID = "0b6a5c1e-0000-4000-8000-000000000004"
NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def config() -> dict[str, Any]:
    body = syncconfig("exp", {"syncPeriod": 30})
    body["metadata"].update({"namespace": NAMESPACE, "uid": UID, "generation": 1})
    return body


def view() -> ConfigView:
    found = lookup_for(config())(NAMESPACE, "exp")
    assert found is not None
    return found


def secret_data() -> dict[str, bytes]:
    secret = reconciler.head_secret(view(), "the-token", NOW)
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def test_the_head_secret_has_its_own_type_name_and_the_four_keys() -> None:
    secret = reconciler.head_secret(view(), "the-token", NOW)
    assert secret["type"] == "trialsync.io/head-node"
    assert secret["metadata"]["name"] == "trialsync-head-exp-0b6a5c1e-tls"
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("SyncConfig", UID, True)
    data = secret_data()
    assert set(data) == {"token", "tls.crt", "tls.key", "ca.crt"}  # no CA key: it is dropped
    assert data["token"] == b"the-token"


def test_the_head_certificate_names_the_service_and_only_its_ca_signed_it() -> None:
    data = secret_data()
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    [ca] = x509.load_pem_x509_certificates(data["ca.crt"])
    service = "trialsync-head-exp"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
    ]
    # The URL workers are given is one of those names.
    assert names.head_url("exp", NAMESPACE) == f"https://{service}.{NAMESPACE}.svc:9747"
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The key is the certificate's.
    key = serialization.load_pem_private_key(data["tls.key"], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    # Long-lived: the Secret is never rewritten while its SyncConfig lives.
    lifetime = cert.not_valid_after_utc - NOW
    assert lifetime >= datetime.timedelta(days=3649)
    assert certificates.not_after(data["ca.crt"]) >= cert.not_valid_after_utc


def test_every_secret_is_a_new_identity() -> None:
    # Two SyncConfigs (or incarnations) never share a CA: one's workers refuse the other's head.
    first, second = secret_data(), secret_data()
    assert first["ca.crt"] != second["ca.crt"]
    assert first["tls.key"] != second["tls.key"]


def injected(role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod and its sidecar as the webhook makes them for ``role``."""
    pod = opted_in_pod(role, "exp", **{names.ROLE_ANNOTATION: role})
    result = injection.plan(pod, NAMESPACE, lookup_for(config()), DEFAULTS)
    out = apply(pod, result.patch)
    [sidecar] = sidecars(out)
    return out, dict(sidecar)


@pytest.mark.parametrize(
    ("role", "files", "env"),
    [
        (
            "head",
            ["token", "tls.crt", "tls.key"],
            {
                "TRIALSYNC_HEAD_TOKEN_FILE": "token",
                "TRIALSYNC_RECEIVER_CERT_FILE": "tls.crt",
                "TRIALSYNC_RECEIVER_KEY_FILE": "tls.key",
            },
        ),
        (
            "worker",
            ["token", "ca.crt"],
            {"TRIALSYNC_HEAD_TOKEN_FILE": "token", "TRIALSYNC_HEAD_CA_FILE": "ca.crt"},
        ),
    ],
)
def test_each_duty_mounts_only_its_files_of_the_head_secret(
    role: str, files: list[str], env: dict[str, str]
) -> None:
    pod, sidecar = injected(role)
    [volume] = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert volume["name"] == names.HEAD_SECRET_VOLUME
    assert volume["secret"]["secretName"] == names.head_secret_name("exp", UID)
    assert [item["key"] for item in volume["secret"]["items"]] == files
    assert [item["path"] for item in volume["secret"]["items"]] == files
    [mount] = [m for m in sidecar["volumeMounts"] if m["name"] == names.HEAD_SECRET_VOLUME]
    assert mount == {
        "name": names.HEAD_SECRET_VOLUME,
        "mountPath": contract.HEAD_SECRET_MOUNT,
        "readOnly": True,
    }
    given = {e["name"]: e["value"] for e in sidecar["env"] if e["name"] in env}
    assert given == {k: f"{contract.HEAD_SECRET_MOUNT}/{v}" for k, v in env.items()}
    # Files, not variables: nothing of the Secret is in the environment.
    assert all("valueFrom" not in e for e in sidecar["env"])
    assert "envFrom" not in sidecar
    # The trainer's containers never mount it.
    for container in pod["spec"]["containers"]:
        assert all(m["name"] != names.HEAD_SECRET_VOLUME for m in container["volumeMounts"])


def test_the_key_never_reaches_a_worker() -> None:
    pod, sidecar = injected("worker")
    text = repr(pod)
    assert names.HEAD_KEY_KEY not in text
    assert "RECEIVER_KEY" not in text
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["TRIALSYNC_HEAD_URL"].startswith("https://")


def test_a_pod_may_not_bring_a_volume_named_like_the_head_secret() -> None:
    pod = opted_in_pod("worker", "exp")
    pod["spec"]["volumes"] = [{"name": names.HEAD_SECRET_VOLUME, "emptyDir": {}}]
    with pytest.raises(injection.Refusal, match="already has a volume named 'trialsync-head'"):
        injection.plan(pod, NAMESPACE, lookup_for(config()), DEFAULTS)


def test_an_upload_pod_mounts_no_head_secret() -> None:
    body = config()
    body["spec"]["uploadDir"] = "s3://bucket/exp"
    pod = opted_in_pod("worker", "exp")
    out = apply(pod, injection.plan(pod, NAMESPACE, lookup_for(body), DEFAULTS).patch)
    assert all(v["name"] != names.HEAD_SECRET_VOLUME for v in out["spec"]["volumes"])
