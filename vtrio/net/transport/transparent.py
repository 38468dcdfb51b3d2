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

import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

# Linux's values; the socket module names them only on some builds.
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
# linux/netfilter_ipv4.h and netfilter_ipv6/ip6_tables.h.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def set_mark(sock: socket.socket | trio.socket.SocketType, mark: int) -> None:
    """SO_MARK: the firewall mark a transparent proxy's rules exempt.

    Raises:
        OSError: the process lacks CAP_NET_ADMIN (EPERM).
    """
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def set_transparent(sock: socket.socket, family: int) -> None:
    """IP_TRANSPARENT: a listener that accepts connections TPROXY diverts to
    it, whatever address they were for.

    Raises:
        OSError: the process lacks CAP_NET_ADMIN (EPERM).
    """
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


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
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(
                socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6
            )
            port = struct.unpack_from(">H", raw, 2)[0]
            address = ipaddress.IPv6Address(raw[8:24])
            host = str(address.ipv4_mapped or address)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
            port = struct.unpack_from(">H", raw, 2)[0]
            host = str(ipaddress.IPv4Address(raw[4:8]))
    except OSError:  # ENOENT: conntrack has no entry (no netfilter, not NATed)
        return None
    original = (host, port)
    # Not diverted: the client dialled the proxy itself, which must not
    # connect to itself.
    return None if original == local_pair else original
