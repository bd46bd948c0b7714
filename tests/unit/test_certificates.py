"""When the webhook's CA and serving certificate are issued and rotated (pure, fake clock)."""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

import pytest

from trialsync_operator.tls import certificates
from trialsync_operator.tls import serving as tls

HOSTS = ["trialsync-webhook.trialsync-system.svc", "trialsync-webhook", "127.0.0.1"]
YEAR = datetime.timedelta(days=365)
ROTATE = datetime.timedelta(days=120)
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _verify(material: certificates.Material) -> None:
    """The serving certificate verifies against the bundle, as an apiserver checks it."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cert").write_bytes(material.cert)
        (Path(tmp) / "key").write_bytes(material.key)
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(Path(tmp) / "cert", Path(tmp) / "key")
    leaf = material.serving_cert()
    assert any(ca.subject == leaf.issuer for ca in material.ca_certs())
    leaf.verify_directly_issued_by(
        next(ca for ca in material.ca_certs() if ca.subject == leaf.issuer)
    )


def test_new_material_covers_every_host_and_verifies() -> None:
    material = certificates.new_material(HOSTS, YEAR, T0)
    assert certificates.covers(material.serving_cert(), HOSTS)
    _verify(material)
    assert material == certificates.Material.from_secret_data(material.as_secret_data())


def test_nothing_changes_while_the_certificate_is_young() -> None:
    material = certificates.new_material(HOSTS, YEAR, T0)
    assert (
        certificates.renew(material, HOSTS, YEAR, ROTATE, T0 + datetime.timedelta(days=200)) is None
    )


def test_the_certificate_is_rotated_well_before_expiry_by_the_same_ca() -> None:
    material = certificates.new_material(HOSTS, YEAR, T0)
    renewed, reason = certificates.renew(
        material, HOSTS, YEAR, ROTATE, T0 + datetime.timedelta(days=250)
    ) or (None, "")
    assert renewed is not None
    assert "expires" in reason
    assert renewed.ca_bundle == material.ca_bundle  # no caBundle change, no failed admission
    assert renewed.cert != material.cert
    _verify(renewed)


def test_a_forced_rotation_or_a_new_host_reissues_the_certificate() -> None:
    material = certificates.new_material(HOSTS, YEAR, T0)
    forced = certificates.renew(material, HOSTS, YEAR, ROTATE, T0, force=True)
    assert forced is not None
    assert forced[1] == "rotation was requested"
    moved = certificates.renew(material, [*HOSTS, "10.0.0.7"], YEAR, ROTATE, T0)
    assert moved is not None
    assert certificates.covers(moved[0].serving_cert(), ["10.0.0.7"])


def test_a_new_ca_joins_the_bundle_before_it_signs_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    two_years = 2 * YEAR
    material = certificates.new_material(HOSTS, two_years, T0)
    # A CA that already nears its end while the serving certificate is young.
    monkeypatch.setattr(certificates, "CA_ROTATE_BEFORE", certificates.CA_VALIDITY - YEAR)
    late = T0 + datetime.timedelta(days=400)
    step1 = certificates.renew(material, HOSTS, two_years, ROTATE, late)
    assert step1 is not None
    assert "new CA" in step1[1]
    with_new_ca = step1[0]
    assert len(with_new_ca.ca_certs()) == 2
    assert with_new_ca.cert == material.cert
    # Within the propagation delay the old certificate is kept, even when forced ...
    assert certificates.renew(with_new_ca, HOSTS, two_years, ROTATE, late, ca_since=late) is None
    assert (
        certificates.renew(with_new_ca, HOSTS, two_years, ROTATE, late, force=True, ca_since=late)
        is None
    )
    # ... after it, the certificate is re-issued by the new CA, still in the bundle.
    after = late + certificates.CA_PROPAGATION
    step2 = certificates.renew(with_new_ca, HOSTS, two_years, ROTATE, after, ca_since=late)
    assert step2 is not None
    assert "previous CA" in step2[1]
    assert step2[0].serving_cert().issuer == with_new_ca.ca_certs()[0].subject
    _verify(step2[0])


def test_an_expired_ca_leaves_the_bundle() -> None:
    old = certificates.new_material(HOSTS, YEAR, T0)
    new = certificates.new_material(HOSTS, YEAR, T0 + certificates.CA_VALIDITY - YEAR)
    bundle = new.ca_bundle + old.ca_bundle
    mixed = certificates.Material(bundle, new.ca_key, new.cert, new.key)
    later = T0 + certificates.CA_VALIDITY + datetime.timedelta(days=1)
    result = certificates.renew(mixed, HOSTS, YEAR, ROTATE, later - datetime.timedelta(days=0))
    assert result is not None
    assert [c.subject for c in result[0].ca_certs()] == [new.ca_certs()[0].subject]


def test_unreadable_secret_data_is_treated_as_absent() -> None:
    assert certificates.Material.from_secret_data({"ca.crt": b"x"}) is None
    good = certificates.new_material(HOSTS, YEAR, T0).as_secret_data()
    assert certificates.Material.from_secret_data({**good, "tls.crt": b"garbage"}) is None
    assert certificates.Material.from_secret_data(good) is not None


async def test_a_replica_serves_a_new_certificate_and_rewrites_nothing_unchanged(
    tmp_path: Path,
) -> None:
    serving = tls.ServingContext(str(tmp_path / "certs"))
    material = certificates.new_material(HOSTS, YEAR, T0)
    await serving.serve(material.cert, material.key)
    assert serving.ready.is_set()  # set on the loop, so a waiting listener wakes at once
    cert = tmp_path / "certs" / "tls.crt"
    inode = cert.stat().st_ino
    await serving.serve(material.cert, material.key)
    assert cert.stat().st_ino == inode
    renewed = certificates.new_material(HOSTS, YEAR, T0 + YEAR)
    await serving.serve(renewed.cert, renewed.key)
    assert cert.read_bytes() == renewed.cert
