"""Transparent proxying on Linux: socket marks, transparent listeners and
the destination a diverted connection was meant for.

Theory of operation: a gateway diverts its clients' connections to a
dokodemo-door with ``followRedirect``. Under netfilter's REDIRECT (or DNAT)
the accepted socket's local address is the proxy's own, and conntrack keeps
the address the client dialled, read back with ``SO_ORIGINAL_DST``. Under
TPROXY the listener is bound with ``IP_TRANSPARENT`` and the accepted socket's
local address *is* the original destination. Either way the proxy's own
connections must not be diverted again: the firewall rules skip packets with
a mark, which every outbound socket carries (``sockopt.mark``, ``SO_MARK``;
both need CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import trio

# Linux's values; the socket module names them only on some builds.
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
# linux/netfilter_ipv4.h and netfilter_ipv6/ip6_tables.h.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
# linux/in.h and linux/in6.h: a TPROXY datagram's destination, as a message.
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
_ANCILLARY_SPACE = 64
# The message level and type of each, and whether it holds a sockaddr_in6.
_ORIGINAL_DESTINATION_MESSAGES = {
    (socket.SOL_IP, IP_RECVORIGDSTADDR): False,
    (socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR): True,
}
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def set_mark(sock: socket.socket | trio.socket.SocketType, mark: int) -> None:
    """SO_MARK: the firewall mark a transparent proxy's rules exempt.

    Raises:
        OSError: the process lacks CAP_NET_ADMIN (EPERM).
    """
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def set_transparent(sock: socket.socket | trio.socket.SocketType, family: int) -> None:
    """IP_TRANSPARENT: a listener that accepts connections TPROXY diverts to
    it, whatever address they were for.

    Raises:
        OSError: the process lacks CAP_NET_ADMIN (EPERM).
    """
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def receive_original_destinations(sock: trio.socket.SocketType, family: int) -> None:
    """Ask for each datagram's original destination (TPROXY, UDP)."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)


async def receive_diverted(
    sock: trio.socket.SocketType, size: int
) -> tuple[bytes, tuple[str, int], tuple[str, int] | None]:
    """A datagram, its sender, and the address it was sent to (None if the
    kernel gave none: it was sent to the listener itself)."""
    data, ancillary, _, sender = await sock.recvmsg(size, _ANCILLARY_SPACE)
    sender = cast("tuple[str, int]", sender)
    original = None
    for level, kind, raw in ancillary:
        ipv6 = _ORIGINAL_DESTINATION_MESSAGES.get((level, kind))
        if ipv6 is not None:
            with contextlib.suppress(OSError):  # a truncated one names nothing
                address, port = _unpack_sockaddr(raw, ipv6=ipv6)
                original = (str(address), port)
    return data, (str(sender[0]), int(sender[1])), original


def _unpack_sockaddr(
    raw: bytes, *, ipv6: bool
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Address and port of a ``sockaddr_in`` / ``sockaddr_in6`` (the port
    and address in network order after the 2-byte family).

    Raises:
        OSError: too short for its kind.
    """
    if len(raw) < (_SOCKADDR_IN6 - 4 if ipv6 else 8):
        raise OSError("truncated socket address")
    (port,) = struct.unpack_from(">H", raw, 2)
    if ipv6:
        return ipaddress.IPv6Address(raw[8:24]), port
    return ipaddress.IPv4Address(raw[4:8]), port


def spoofing_socket(
    address: tuple[str, int], family: int, client: tuple[str, int]
) -> socket.socket:
    """A non-blocking UDP socket bound transparently to ``address`` (not
    ours), to answer a diverted client from the address it sent to.

    It is connected to ``client``: it only receives from its peer, so it
    takes no datagram meant for whoever else uses ``address``; but TPROXY
    hands it the client's next datagrams to ``address``, which its owner
    must read.

    Raises:
        OSError: the bind failed, or CAP_NET_ADMIN is missing.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_transparent(sock, family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.connect(client)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def original_destination(sock: socket.socket, mode: str) -> tuple[str, int] | None:
    """The address and port a diverted connection was dialled to, or None
    when it was not diverted (it came to the listener's own address).

    ``mode`` is the inbound's ``sockopt.tproxy``: "tproxy" takes the local
    address; otherwise netfilter is asked (REDIRECT, DNAT).
    """
    local = sock.getsockname()
    local_pair = (str(ipaddress.ip_address(local[0].split("%")[0])), int(local[1]))
    if mode == "tproxy":
        return local_pair
    ipv6 = sock.family == socket.AF_INET6
    try:
        if ipv6:
            raw = sock.getsockopt(
                socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6
            )
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        address, port = _unpack_sockaddr(raw, ipv6=ipv6)
    except OSError:  # ENOENT: conntrack has no entry (no netfilter, not NATed)
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    original = (str(address), port)
    # Not diverted: the client dialled the proxy itself, which must not
    # connect to itself.
    return None if original == local_pair else original
