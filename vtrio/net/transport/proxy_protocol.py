"""The PROXY protocol (v1 text, v2 binary) in front of an accepted connection.

Theory of operation: behind a load balancer (HAProxy, nginx ``proxy_protocol``,
a cloud balancer) every connection comes from the balancer, which puts the
client's real address in a header before the first byte of the proxied
stream. With ``acceptProxyProtocol`` an inbound requires that header, as
v2ray 5 and Xray do (their listeners use go-proxyproto with REQUIRE), and
logs the address it names. The header is read from the socket without
reading past it: the bytes are peeked, and only the header's own are taken,
so TLS, WebSocket or VMess start on the very next byte.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vtrio.errors import RemoteProtocolError

if TYPE_CHECKING:
    from vtrio.net.transport.tcp import TCPStream

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# v1's longest line (spec 2.1), CRLF included.
V1_MAX = 107
V2_FIXED = 16
# Bound on a v2 header with its TLVs (the spec allows 64 KiB; balancers send
# a few hundred bytes at most).
V2_MAX = 4096
_V1 = re.compile(
    rb"PROXY (?:UNKNOWN[^\r\n]*|(TCP4|TCP6) (\S+) (\S+) ([0-9]{1,5}) ([0-9]{1,5}))\r\n"
)
# v2 families whose addresses vtrio reads: (source address size, port offset).
_V2_INET = {0x11: (4, 8), 0x12: (4, 8), 0x21: (16, 32), 0x22: (16, 32)}
_V2_OTHER = {0x00, 0x31, 0x32}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: its size, and the client it names (None for v1
    UNKNOWN, v2 LOCAL or a non-IP family: the connection's own peer)."""

    length: int
    source: tuple[str, int] | None


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None if it is not complete yet.

    Raises:
        RemoteProtocolError: the bytes so far cannot start a PROXY header, or
            a complete one is malformed.
    """
    if V2_SIGNATURE.startswith(data[:12]) and data[:1] == b"\r":
        return _parse_v2(data)
    if not b"PROXY ".startswith(data[:6]):
        raise RemoteProtocolError(
            f"no PROXY protocol header (first bytes {data[:8].hex(' ')})"
        )
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise RemoteProtocolError(f"PROXY protocol v1 line over {V1_MAX} bytes")
        return None
    line = data[: end + 2]
    match = _V1.fullmatch(line)
    if match is None or len(line) > V1_MAX:
        raise RemoteProtocolError(f"malformed PROXY protocol v1 line {line[:60]!r}")
    if match[1] is None:
        return ProxyHeader(len(line), None)
    version = 4 if match[1] == b"TCP4" else 6
    try:
        source = ipaddress.ip_address(match[2].decode())
        ipaddress.ip_address(match[3].decode())
    except ValueError:
        raise RemoteProtocolError(
            f"bad address in PROXY protocol line {line!r}"
        ) from None
    port = int(match[4])
    if source.version != version or port > 65535 or int(match[5]) > 65535:
        raise RemoteProtocolError(f"bad PROXY protocol v1 line {line!r}")
    return ProxyHeader(len(line), (str(source), port))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    command, family = data[12], data[13]
    size = int.from_bytes(data[14:16], "big")
    if command >> 4 != 2 or command & 0x0F > 1:
        raise RemoteProtocolError(
            f"PROXY protocol v2: bad version/command {command:#x}"
        )
    if V2_FIXED + size > V2_MAX:
        raise RemoteProtocolError(f"PROXY protocol v2 header over {V2_MAX} bytes")
    if len(data) < V2_FIXED + size:
        return None
    length = V2_FIXED + size
    if command & 0x0F == 0 or family in _V2_OTHER:  # LOCAL: the balancer's own
        return ProxyHeader(length, None)
    if family not in _V2_INET:
        raise RemoteProtocolError(f"PROXY protocol v2: unknown family {family:#x}")
    address_size, port_at = _V2_INET[family]
    if size < 2 * address_size + 4:
        raise RemoteProtocolError("PROXY protocol v2: addresses cut short")
    body = data[V2_FIXED:length]
    source = ipaddress.ip_address(body[:address_size])
    port = int.from_bytes(body[port_at : port_at + 2], "big")
    return ProxyHeader(length, (str(source), port))


async def receive_proxy_header(stream: TCPStream) -> tuple[str, int] | None:
    """Take the PROXY header off ``stream``; the client address it names.

    Raises:
        RemoteProtocolError: no header, a malformed one, or the peer closed
            inside it.
    """
    taken = b""
    while True:
        waiting = await stream.peek(V2_MAX - len(taken))
        if not waiting:
            raise RemoteProtocolError("connection closed inside its PROXY header")
        try:
            header = parse_proxy_header(taken + waiting)
        except RemoteProtocolError:
            # Read, as go-proxyproto's buffered reader would have: the close
            # that follows is then a FIN, not a reset over unread bytes.
            stream.receive_nowait(len(waiting))
            raise
        # What is not the header stays in the socket for the next layer.
        size = len(waiting) if header is None else header.length - len(taken)
        taken += stream.receive_nowait(size) or b""
        if header is not None:
            return header.source
