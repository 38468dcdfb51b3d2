"""Certificate names read from DER, checked against the ``cryptography``
package's reading of certificates it built, and Xray's choice by SNI."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509 as crypto_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.certs import make_pki
from vtrio.protocol.x509 import (
    CertificateNames,
    certificate_for,
    certificate_names,
    is_for,
    public_key_info,
)

KEY = ec.generate_private_key(ec.SECP256R1())
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DNS_NAME = st.builds(
    lambda wild, labels: ("*." if wild else "") + ".".join(labels),
    st.booleans(),
    st.lists(LABEL, min_size=1, max_size=4),
)


def build(
    common_names: list[str],
    dns_names: list[str],
    *,
    critical: bool = False,
    others: bool = True,
) -> bytes:
    """A self-signed certificate's DER, with these subject CNs and SAN DNS
    names (and, with ``others``, an IP, an e-mail and further attributes)."""
    attributes = [crypto_x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vtrio")]
    attributes += [
        crypto_x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names
    ]
    subject = crypto_x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        crypto_x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(KEY.public_key())
        .serial_number(crypto_x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    general: list[crypto_x509.GeneralName] = [
        crypto_x509.DNSName(name) for name in dns_names
    ]
    if others:
        general += [
            crypto_x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            crypto_x509.RFC822Name("a@example.com"),
        ]
        builder = builder.add_extension(
            crypto_x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    if general:
        builder = builder.add_extension(
            crypto_x509.SubjectAlternativeName(general), critical=critical
        )
    certificate = builder.sign(KEY, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.DER)


@settings(max_examples=60, deadline=None)
@given(
    common_names=st.lists(DNS_NAME, max_size=2),
    dns_names=st.lists(DNS_NAME, max_size=4),
    critical=st.booleans(),
    others=st.booleans(),
)
def test_names_are_the_ones_the_certificate_was_built_with(
    common_names: list[str], dns_names: list[str], critical: bool, others: bool
) -> None:
    der = build(common_names, dns_names, critical=critical, others=others)
    names = certificate_names(der)
    # Go (and so Xray) keeps the last common name of the subject.
    assert names.common_name == (common_names[-1] if common_names else None)
    assert names.dns_names == tuple(dns_names)
    assert names.ip_addresses == (
        (ipaddress.ip_address("192.0.2.1"),) if others else ()
    )


def test_the_test_pki_leaf_and_ca() -> None:
    pki = make_pki(("a.example", "localhost", "127.0.0.1", "::1"))
    leaf = certificate_names(ssl.PEM_cert_to_DER_cert(pki.cert_pem))
    addresses = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert leaf == CertificateNames("a.example", ("a.example", "localhost"), addresses)
    ca = certificate_names(ssl.PEM_cert_to_DER_cert(pki.ca_pem))
    assert ca == CertificateNames("vtrio test CA", ())


def system_certificates() -> list[bytes]:
    """The DER of each certificate in the system's CA bundle, if it has one."""
    bundle = ssl.get_default_verify_paths().cafile
    if bundle is None or not Path(bundle).is_file():
        return []
    text = Path(bundle).read_text(errors="replace")
    marker = "-----BEGIN CERTIFICATE-----"
    return [
        ssl.PEM_cert_to_DER_cert(
            marker
            + block.split("-----END CERTIFICATE-----")[0]
            + "-----END CERTIFICATE-----\n"
        )
        for block in text.split(marker)[1:]
    ]


@pytest.mark.filterwarnings("ignore:Parsed a serial number:UserWarning")
def test_real_world_certificates_read_as_cryptography_reads_them() -> None:
    """Names and public keys of the system's CA bundle (whatever its size)."""
    for der in system_certificates():
        certificate = crypto_x509.load_der_x509_certificate(der)
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        expected = str(common_names[-1].value) if common_names else None
        try:
            san = certificate.extensions.get_extension_for_class(
                crypto_x509.SubjectAlternativeName
            )
            dns_names = tuple(san.value.get_values_for_type(crypto_x509.DNSName))
        except crypto_x509.ExtensionNotFound:
            dns_names = ()
        assert certificate_names(der)[:2] == (expected, dns_names)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        assert public_key_info(der) == spki


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_names_or_value_error(data: bytes) -> None:
    try:
        names = certificate_names(data)
    except ValueError:
        return
    assert isinstance(names, CertificateNames)


def test_every_truncation_of_a_certificate_is_refused() -> None:
    der = build(["a.example"], ["a.example", "*.b.example"])
    for cut in range(len(der)):
        with pytest.raises(ValueError, match=r"DER|certificate|TBSCertificate"):
            certificate_names(der[:cut])


A = CertificateNames("a.example", ("a.example", "www.a.example"))
B = CertificateNames("B server", ("*.b.example",))
BARE = CertificateNames(None, ("c.example",))


@pytest.mark.parametrize(
    ("server_name", "reject", "chosen"),
    [
        ("a.example", False, 0),
        ("WWW.A.Example", False, 0),
        ("x.b.example", False, 1),
        ("b.example", False, 0),  # the wildcard is one level down only
        ("x.y.b.example", False, 0),
        ("unknown.example", False, 0),
        (None, False, 0),
        ("x.b.example", True, 1),
        ("a.example", True, 0),
        ("unknown.example", True, None),
        ("b.example", True, None),
        (None, True, None),
    ],
)
def test_the_certificate_for_a_server_name(
    server_name: str | None, reject: bool, chosen: int | None
) -> None:
    assert certificate_for(server_name, [A, B], reject_unknown=reject) == chosen


def test_one_certificate_serves_every_name_unless_unknown_ones_are_rejected() -> None:
    assert certificate_for("elsewhere.example", [B]) == 0
    assert certificate_for("elsewhere.example", [B], reject_unknown=True) is None


def test_an_empty_sni_matches_a_certificate_without_common_name_as_in_go() -> None:
    assert certificate_for(None, [A, BARE], reject_unknown=True) == 1
    assert certificate_for(None, [A], reject_unknown=True) is None


WILD = CertificateNames(
    "ignored.example",
    ("*.b.example", "a.example."),
    (ipaddress.ip_address("192.0.2.7"),),
)


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("a.example", True),
        ("A.Example.", True),
        ("x.b.example", True),
        ("b.example", False),  # the wildcard needs its label
        ("y.x.b.example", False),  # and stands for one label only
        ("ignored.example", False),  # the common name is not looked at
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("[::1]", False),
    ],
)
def test_a_certificate_is_for_a_host_as_go_checks_it(host: str, valid: bool) -> None:
    assert is_for(WILD, host) is valid
