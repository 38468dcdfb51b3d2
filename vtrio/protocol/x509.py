"""The names an X.509 certificate is for: its subject's common name and the
DNS names of its subjectAltName, read from DER.

Theory of operation: a server with several certificates picks one by the
client's SNI (and, with Xray's ``rejectUnknownSni``, refuses names none is
for), which needs the names of each. The stdlib only decodes the certificate
a peer sent, so this walks the DER itself: the tags and lengths of the few
structures on the way (RFC 5280 4.1), nothing else; every other field is
skipped whole. Anything that is not well-formed DER of that shape raises
``ValueError``.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SEQUENCE = 0x30
_SET = 0x31
_OID = 0x06
_OCTET_STRING = 0x04
_BOOLEAN = 0x01
_VERSION = 0xA0  # [0] EXPLICIT
_EXTENSIONS = 0xA3  # [3] EXPLICIT
_DNS_NAME = 0x82  # GeneralName [2] IMPLICIT IA5String
_IP_ADDRESS = 0x87  # GeneralName [7] IMPLICIT OCTET STRING
_COMMON_NAME = bytes((0x55, 0x04, 0x03))  # 2.5.4.3
_SUBJECT_ALT_NAME = bytes((0x55, 0x1D, 0x11))  # 2.5.29.17
# TBSCertificate fields before the subject: serialNumber, signature, issuer, validity.
_FIELDS_BEFORE_SUBJECT = 4


class CertificateNames(NamedTuple):
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...] = ()


def _elements(data: bytes | memoryview) -> list[tuple[int, memoryview]]:
    """The (tag, contents) of each TLV in ``data``, which they must fill."""
    view = memoryview(data)
    found = []
    offset = 0
    while offset < len(view):
        if offset + 2 > len(view):
            raise ValueError("truncated DER element")
        tag, length = view[offset], view[offset + 1]
        if tag & 0x1F == 0x1F:
            raise ValueError("DER tags above 30 are not used in certificates")
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or offset + count > len(view):
                raise ValueError("bad DER length")
            length = int.from_bytes(view[offset : offset + count], "big")
            offset += count
        if offset + length > len(view):
            raise ValueError("DER element runs past its container")
        found.append((tag, view[offset : offset + length]))
        offset += length
    return found


def _only(data: bytes | memoryview, tag: int) -> memoryview:
    elements = _elements(data)
    if len(elements) != 1 or elements[0][0] != tag:
        raise ValueError(f"expected one DER element of tag {tag:#x}")
    return elements[0][1]


def _is_oid(element: tuple[int, memoryview], oid: bytes) -> bool:
    return element[0] == _OID and element[1] == oid


def _text(contents: memoryview) -> str:
    return bytes(contents).decode("utf-8", "replace")


def _tbs_fields(der: bytes) -> list[tuple[int, memoryview]]:
    """The TBSCertificate's fields from the serial number on."""
    certificate = _elements(_only(der, _SEQUENCE))
    if not certificate or certificate[0][0] != _SEQUENCE:
        raise ValueError("a certificate starts with its TBSCertificate")
    fields = _elements(certificate[0][1])
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    return fields


def certificate_names(der: bytes) -> CertificateNames:
    """The subject's common name (the last, as Go reads it) and the
    subjectAltName's DNS names of the certificate ``der``.

    Raises:
        ValueError: ``der`` is not a certificate of that shape.
    """
    fields = _tbs_fields(der)
    if len(fields) <= _FIELDS_BEFORE_SUBJECT:
        raise ValueError("the TBSCertificate ends before its subject")
    subject_tag, subject = fields[_FIELDS_BEFORE_SUBJECT]
    if subject_tag != _SEQUENCE:
        raise ValueError("the subject is not a Name")
    common_name = None
    for rdn_tag, rdn in _elements(subject):
        if rdn_tag != _SET:
            raise ValueError("a Name is a sequence of sets")
        for _, attribute in _elements(rdn):
            parts = _elements(attribute)
            if len(parts) == 2 and _is_oid(parts[0], _COMMON_NAME):
                common_name = _text(parts[1][1])
    dns_names: list[str] = []
    ip_addresses: list[IPAddress] = []
    for tag, contents in fields[_FIELDS_BEFORE_SUBJECT + 1 :]:
        if tag != _EXTENSIONS:
            continue
        for _, extension in _elements(_only(contents, _SEQUENCE)):
            parts = _elements(extension)
            if not parts or not _is_oid(parts[0], _SUBJECT_ALT_NAME):
                continue
            if len(parts) == 3 and parts[1][0] == _BOOLEAN:
                parts = [parts[0], parts[2]]
            if len(parts) != 2 or parts[1][0] != _OCTET_STRING:
                raise ValueError("a subjectAltName extension holds an octet string")
            for name_tag, name in _elements(_only(parts[1][1], _SEQUENCE)):
                if name_tag == _DNS_NAME:
                    dns_names.append(_text(name))
                elif name_tag == _IP_ADDRESS and len(name) in (4, 16):
                    ip_addresses.append(ipaddress.ip_address(bytes(name)))
    return CertificateNames(common_name, tuple(dns_names), tuple(ip_addresses))


def certificate_for(
    server_name: str | None,
    certificates: list[CertificateNames],
    *,
    reject_unknown: bool = False,
) -> int | None:
    """The index of the certificate to serve a client that asked for
    ``server_name`` (SNI; None when it sent none), as Xray picks it: the
    first whose common name or a DNS name is that name or its one-level
    wildcard (``*.example.com`` for ``a.example.com``), else the first
    certificate, or None (refuse the handshake) with ``reject_unknown``."""
    name = (server_name or "").lower()
    if not reject_unknown and (len(certificates) == 1 or not name):
        return 0
    _, dot, parent = name.partition(".")
    wanted = {name, "*" + dot + parent}
    for index, certificate in enumerate(certificates):
        # A certificate without a common name has Go's empty one, which an
        # empty SNI matches.
        names = {n.lower() for n in certificate.dns_names}
        names.add((certificate.common_name or "").lower())
        if names & wanted:
            return index
    return None if reject_unknown else 0


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def public_key_info(der: bytes) -> bytes:
    """The certificate's SubjectPublicKeyInfo, tag and length included (what
    a public-key pin hashes).

    Raises:
        ValueError: ``der`` is not a certificate of that shape.
    """
    fields = _tbs_fields(der)
    if len(fields) <= _FIELDS_BEFORE_SUBJECT + 1:
        raise ValueError("the TBSCertificate ends before its public key")
    tag, contents = fields[_FIELDS_BEFORE_SUBJECT + 1]
    if tag != _SEQUENCE:
        raise ValueError("the public key is not a SubjectPublicKeyInfo")
    # DER lengths have one encoding: the element's own bytes, rebuilt.
    return bytes((tag,)) + _der_length(len(contents)) + bytes(contents)


def is_for(certificate: CertificateNames, host: str) -> bool:
    """Whether the certificate is valid for ``host`` as Go checks it: an IP
    against its IP addresses, a name against its DNS names (a ``*`` standing
    for the whole first label only), case-insensitive; the common name is
    not looked at."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return address in certificate.ip_addresses
    labels = host.lower().rstrip(".").split(".")
    for pattern in certificate.dns_names:
        wanted = pattern.lower().rstrip(".").split(".")
        if len(wanted) == len(labels) and all(
            want == label or (index == 0 and want == "*" and label)
            for index, (want, label) in enumerate(zip(wanted, labels, strict=True))
        ):
            return True
    return False
