"""packetaddr: UDP with an address per datagram inside one VMess UDP tunnel.

Theory of operation (spec section 7): sing-box (``packet_encoding:
"packetaddr"``) and v2fly 5 send a command-2 request to the magic domain
``sp.packet-addr.v2fly.arpa``; every datagram then starts with its own
destination, ``ATyp (1 IPv4 | 2 IPv6) ‖ IP ‖ BE16 port``, and replies start
with their source the same way. Note the order: address first, then port, and
no domains.
"""

from __future__ import annotations

import ipaddress
import struct

from vtrio.errors import RemoteProtocolError

MAGIC_DOMAIN = "sp.packet-addr.v2fly.arpa"
_IPV4, _IPV6 = 1, 2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unpack_datagram(data: bytes) -> tuple[IPAddress, int, bytes]:
    """The destination, port and payload of one datagram.

    Raises:
        RemoteProtocolError: an unknown address type or a short datagram.
    """
    if not data:
        raise RemoteProtocolError("empty packetaddr datagram")
    size = {_IPV4: 4, _IPV6: 16}.get(data[0])
    if size is None or len(data) < 1 + size + 2:
        raise RemoteProtocolError("bad packetaddr datagram header")
    raw = data[1 : 1 + size]
    address: IPAddress = (
        ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    )
    (port,) = struct.unpack_from("!H", data, 1 + size)
    return address, port, data[1 + size + 2 :]


def pack_datagram(address: IPAddress, port: int, payload: bytes) -> bytes:
    """A datagram prefixed with its address and port."""
    kind = _IPV4 if isinstance(address, ipaddress.IPv4Address) else _IPV6
    return bytes((kind,)) + address.packed + struct.pack("!H", port) + payload
