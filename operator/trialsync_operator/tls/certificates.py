"""The webhook's TLS material: a CA, a serving certificate, and when to rotate them (pure).

Kept in one Secret (``kubernetes.io/tls`` plus ``ca.crt`` and ``ca.key``), as the Vault
injector does. ``ca.crt`` is a bundle: the current CA first, then a previous one while
it is still valid, so apiservers keep trusting certificates it signed while a new CA
propagates. Rotation never breaks an admission: a new serving certificate is signed by
a CA already in every caBundle, and replicas reload it without closing their listener.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
CA_ROTATE_BEFORE = datetime.timedelta(days=365)
#: A new CA is trusted by apiservers only after the caBundle patch reached them: wait this
#: long before signing serving certificates with it.
CA_PROPAGATION = datetime.timedelta(seconds=60)
#: Backdating absorbs clock skew between this pod and the apiservers.
BACKDATE = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class Material:
    """The Secret's content, as PEM bytes."""

    ca_bundle: bytes  # current CA first, then a previous one still valid
    ca_key: bytes
    cert: bytes
    key: bytes

    def as_secret_data(self) -> dict[str, bytes]:
        return {
            "ca.crt": self.ca_bundle,
            "ca.key": self.ca_key,
            "tls.crt": self.cert,
            "tls.key": self.key,
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes]) -> Material | None:
        """None if a key is missing or a certificate does not parse."""
        try:
            material = cls(data["ca.crt"], data["ca.key"], data["tls.crt"], data["tls.key"])
            material.ca_certs()
            x509.load_pem_x509_certificate(material.cert)
            serialization.load_pem_private_key(material.ca_key, None)
            serialization.load_pem_private_key(material.key, None)
        except (KeyError, ValueError, TypeError):
            return None
        return material

    def ca_certs(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.ca_bundle)

    def serving_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert)


def new_material(
    hosts: Sequence[str],
    validity: datetime.timedelta,
    now: datetime.datetime,
    ca_name: str = "trialsync-webhook-ca",
) -> Material:
    """A fresh CA (``ca_name``, and when) and a serving certificate for ``hosts`` signed
    by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_cert(ca_key, now, ca_name)
    cert, key = _serving(ca, ca_key, hosts, validity, now)
    return Material(_pem(ca), _key_pem(ca_key), cert, key)


def renew(
    material: Material,
    hosts: Sequence[str],
    validity: datetime.timedelta,
    rotate_before: datetime.timedelta,
    now: datetime.datetime,
    force: bool = False,
    ca_since: datetime.datetime | None = None,
) -> tuple[Material, str] | None:
    """The next material and why, or None if nothing needs to change.

    In order: a CA near its end gets a successor (added to the bundle, not yet used);
    a serving certificate that expires within ``rotate_before``, misses a host, is
    forced, or was signed by an older CA that the new one has replaced for
    ``CA_PROPAGATION`` (``ca_since``) is re-issued; expired CAs leave the bundle.
    """
    cas = material.ca_certs()
    current_ca = cas[0]
    ca_key = serialization.load_pem_private_key(material.ca_key, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    if _not_after(current_ca) - now < CA_ROTATE_BEFORE:
        new_key = ec.generate_private_key(ec.SECP256R1())
        new_ca = _ca_cert(new_key, now)
        bundle = _pem(new_ca) + b"".join(_pem(c) for c in cas if _not_after(c) > now)
        return (
            dataclasses.replace(material, ca_bundle=bundle, ca_key=_key_pem(new_key)),
            "the CA nears its expiry: a new CA joins the bundle",
        )
    serving = material.serving_cert()
    if (
        serving.issuer != current_ca.subject
        and ca_since is not None
        and now - ca_since < CA_PROPAGATION
        and _not_after(serving) > now
    ):
        return None  # a new CA is still reaching the caBundles: it signs nothing yet
    reason = None
    if force:
        reason = "rotation was requested"
    elif _not_after(serving) - now < rotate_before:
        reason = f"the certificate expires at {_not_after(serving):%Y-%m-%d %H:%M} UTC"
    elif not covers(serving, hosts):
        reason = f"the certificate does not cover {', '.join(hosts)}"
    elif serving.issuer != current_ca.subject:
        reason = "the certificate was signed by the previous CA"
    live = [c for c in cas if _not_after(c) > now]
    if reason is None:
        if len(live) == len(cas):
            return None
        return (
            dataclasses.replace(material, ca_bundle=b"".join(_pem(c) for c in live)),
            "an expired CA left the bundle",
        )
    cert, key = _serving(current_ca, ca_key, hosts, validity, now)
    bundle = b"".join(_pem(c) for c in live)
    return dataclasses.replace(material, ca_bundle=bundle, cert=cert, key=key), reason


def covers(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    """Whether ``cert`` names every one of ``hosts`` (DNS names or IP addresses)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not hosts
    names = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return all(host in names or host in ips for host in hosts)


def not_after(pem: bytes) -> datetime.datetime:
    return _not_after(x509.load_pem_x509_certificate(pem))


def _ca_cert(
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    ca_name: str = "trialsync-webhook-ca",
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_name}-{now:%Y%m%d%H%M%S}")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _serving(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
    validity: datetime.timedelta,
    now: datetime.datetime,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, _not_after(ca)))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
