"""Throwaway certificate authorities and server certificates for TLS tests.

Theory of operation: nothing secret is committed; each test session makes a fresh
CA and leaf certificates with the ``cryptography`` package (ECDSA P-256, fast to
generate, accepted by Python, Go and sing-box). ``make_pki`` is cached, so a test
run signs each distinct set of names once.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from pathlib import Path

SERVER_NAMES = ("vtrio.test", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class PKI:
    """A CA and one leaf certificate it signed, all PEM text."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """Write (ca.pem, cert.pem, key.pem) into ``directory``, for peer configs."""
        paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        for path, text in zip(
            paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True
        ):
            path.write_text(text)
        return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@functools.cache
def make_pki(names: tuple[str, ...] = SERVER_NAMES, *, client: bool = False) -> PKI:
    """Make a CA and a server certificate valid for ``names`` (DNS names or
    IPs); with ``client``, a client certificate instead (TLS client auth)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=7))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vtrio test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
                    if client
                    else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return PKI(ca_pem=_pem(ca), cert_pem=_pem(leaf), key_pem=key_pem)
