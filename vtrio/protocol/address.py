"""Destination addresses as VMess writes them (spec section 4.1).

Theory of operation: VMess puts the port *before* the address and numbers the
address types 1 (IPv4), 2 (domain), 3 (IPv6), unlike SOCKS5. A domain that
parses as an IP literal is turned into that IP, as v2ray's address parser does,
so a peer cannot smuggle an IP past domain-based routing. Domains are limited
to the characters v2ray accepts, and an empty domain is refused (v2ray would
index past its end).
"""

from __future__ import annotations

import ipaddress
import re

from vtrio.errors import LocalProtocolError, RemoteProtocolError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address | str

ATYP_IPV4 = 1
ATYP_DOMAIN = 2
ATYP_IPV6 = 3

MAX_DOMAIN_LENGTH = 255
_DOMAIN_CHARACTERS = re.compile(rb"[0-9A-Za-z._-]+")


def parse_address(text: str) -> Address:
    """An IP address object for IP literals, else the domain text."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text


def pack_address(address: Address) -> bytes:
    """ATyp and address bytes for an instruction or a Mux frame.

    Raises:
        LocalProtocolError: the domain is empty, too long or not ASCII.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return bytes((ATYP_IPV4,)) + address.packed
    if isinstance(address, ipaddress.IPv6Address):
        return bytes((ATYP_IPV6,)) + address.packed
    try:
        encoded = address.encode("ascii")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"domain {address!r} is not ASCII") from exc
    if not 0 < len(encoded) <= MAX_DOMAIN_LENGTH:
        raise LocalProtocolError(f"domain length {len(encoded)} is not in 1..255")
    return bytes((ATYP_DOMAIN, len(encoded))) + encoded


def address_length(data: bytes, offset: int) -> int | None:
    """Bytes the address at ``offset`` takes, type byte included.

    Returns:
        The length, or None while the bytes that tell it are not there yet.

    Raises:
        RemoteProtocolError: the address type is unknown.
    """
    if len(data) <= offset:
        return None
    atyp = data[offset]
    if atyp == ATYP_IPV4:
        return 1 + 4
    if atyp == ATYP_IPV6:
        return 1 + 16
    if atyp == ATYP_DOMAIN:
        if len(data) <= offset + 1:
            return None
        return 2 + data[offset + 1]
    raise RemoteProtocolError(f"unknown address type {atyp}")


def unpack_address(data: bytes, offset: int) -> tuple[Address, int]:
    """Read an address written by :func:`pack_address`.

    Returns:
        The address and the offset just past it.

    Raises:
        RemoteProtocolError: unknown type, short data, or an invalid domain.
    """
    length = address_length(data, offset)
    if length is None or len(data) < offset + length:
        raise RemoteProtocolError("address runs past the end of the header")
    raw = data[offset + 1 : offset + length]
    end = offset + length
    if data[offset] == ATYP_IPV4:
        return ipaddress.IPv4Address(raw), end
    if data[offset] == ATYP_IPV6:
        return ipaddress.IPv6Address(raw), end
    return parse_domain(raw[1:]), end


def parse_domain(raw: bytes) -> Address:
    """A domain from the wire, or the IP it spells (v2ray ``ParseAddress``).

    Raises:
        RemoteProtocolError: empty, or a character v2ray refuses.
    """
    if not raw:
        raise RemoteProtocolError("empty domain")
    if raw[:1].isdigit() or raw[:1] == b"[":
        try:
            return ipaddress.ip_address(raw.decode("ascii").strip("[]"))
        except ValueError:
            pass
    if _DOMAIN_CHARACTERS.fullmatch(raw) is None:
        raise RemoteProtocolError("invalid remote address: bad domain characters")
    return raw.decode("ascii")


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    """Host and port of ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6
    address, as written in HTTP requests and on command lines.

    Raises:
        ValueError: the port is not a number.
    """
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest.removeprefix(":")
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:
        host, port = authority, ""
    return host, int(port) if port else default_port
