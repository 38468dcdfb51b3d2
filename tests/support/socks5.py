"""A SOCKS5 test client: CONNECT and UDP ASSOCIATE (RFC 1928), no auth.

Theory of operation: the interop chains enter a real peer or vtrio through
its socks inbound, exactly as an application would. ``open_connect`` does the
no-auth handshake and returns the connected stream. ``open_udp_associate``
keeps the TCP control connection open for the life of the association (the
relay ends when it closes) and wraps datagrams in the RFC 1928 section 7 UDP
header.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import TYPE_CHECKING, Any

import trio

from vtrio.config import model

if TYPE_CHECKING:
    from types import TracebackType

VERSION = 5
NO_AUTH = 0
CONNECT = 1
UDP_ASSOCIATE = 3
ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4
SUCCEEDED = 0
MAX_DATAGRAM = 65535


class SocksError(Exception):
    """The proxy refused or garbled the SOCKS5 exchange."""


def pack_address(host: str, port: int) -> bytes:
    """ATYP, address and port as SOCKS5 writes them; names stay names."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        encoded = host.encode("ascii")
        return bytes([ATYP_DOMAIN, len(encoded)]) + encoded + struct.pack(">H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + struct.pack(">H", port)


def unpack_address(data: bytes, offset: int) -> tuple[str, int, int]:
    """(host, port, offset after them) from a SOCKS5 address at ``offset``."""
    atyp = data[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4
        host = str(ipaddress.IPv4Address(data[offset + 1 : end]))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16
        host = str(ipaddress.IPv6Address(data[offset + 1 : end]))
    elif atyp == ATYP_DOMAIN:
        end = offset + 2 + data[offset + 1]
        host = data[offset + 2 : end].decode("ascii")
    else:
        raise SocksError(f"unknown address type {atyp}")
    (port,) = struct.unpack(">H", data[end : end + 2])
    return host, port, end + 2


async def receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    """Exactly ``count`` bytes.

    Raises:
        SocksError: the stream ended first.
    """
    received = bytearray()
    while len(received) < count:
        chunk = await stream.receive_some(count - len(received))
        if not chunk:
            raise SocksError(f"EOF after {len(received)} of {count} bytes")
        received += chunk
    return bytes(received)


async def _request(
    stream: trio.abc.Stream, command: int, host: str, port: int
) -> tuple[str, int]:
    """Greeting plus one request; returns the bound address of the reply."""
    await stream.send_all(bytes([VERSION, 1, NO_AUTH]))
    if await receive_exactly(stream, 2) != bytes([VERSION, NO_AUTH]):
        raise SocksError("the proxy refused the no-auth method")
    await stream.send_all(bytes([VERSION, command, 0]) + pack_address(host, port))
    head = await receive_exactly(stream, 4)
    if head[1] != SUCCEEDED:
        raise SocksError(f"request failed with reply code {head[1]}")
    if head[3] == ATYP_DOMAIN:
        length = await receive_exactly(stream, 1)
        rest = length + await receive_exactly(stream, length[0] + 2)
    else:
        size = 4 if head[3] == ATYP_IPV4 else 16
        rest = await receive_exactly(stream, size + 2)
    bound_host, bound_port, _ = unpack_address(head[3:4] + rest, 0)
    return bound_host, bound_port


async def open_connect(
    proxy_host: str, proxy_port: int, host: str, port: int
) -> trio.SocketStream:
    """A stream to ``host:port`` through the SOCKS5 proxy (CONNECT).

    Raises:
        SocksError: the proxy refused.
        OSError: the proxy could not be reached.
    """
    stream = await trio.open_tcp_stream(proxy_host, proxy_port)
    try:
        await _request(stream, CONNECT, host, port)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class UdpAssociation:
    """One UDP ASSOCIATE: a control stream and a local datagram socket."""

    def __init__(
        self,
        control: trio.SocketStream,
        sock: trio.socket.SocketType,
        relay: tuple[str, int],
    ) -> None:
        self._control = control
        self._sock = sock
        self._relay = relay

    async def send_to(self, host: str, port: int, payload: bytes) -> None:
        """Send one datagram to ``host:port`` through the relay."""
        header = b"\x00\x00\x00" + pack_address(host, port)
        await self._sock.sendto(header + payload, self._relay)

    async def receive_from(self) -> tuple[str, int, bytes]:
        """The next datagram from the relay: (source host, port, payload).

        Raises:
            SocksError: fragmented or malformed relay datagram.
        """
        data = await self._sock.recv(MAX_DATAGRAM)
        if len(data) < 4 or data[2] != 0:
            raise SocksError(f"unexpected relay datagram header {data[:4]!r}")
        host, port, offset = unpack_address(data, 3)
        return host, port, data[offset:]

    async def aclose(self) -> None:
        self._sock.close()
        await self._control.aclose()

    async def __aenter__(self) -> UdpAssociation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_udp_associate(proxy_host: str, proxy_port: int) -> UdpAssociation:
    """A UDP association through the SOCKS5 proxy at ``proxy_host:proxy_port``.

    Raises:
        SocksError: the proxy refused.
    """
    control = await trio.open_tcp_stream(proxy_host, proxy_port)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await sock.bind(("127.0.0.1", 0))
        relay = await _request(control, UDP_ASSOCIATE, "0.0.0.0", 0)
    except BaseException:
        sock.close()
        await trio.aclose_forcefully(control)
        raise
    return UdpAssociation(control, sock, relay)


def socks_inbound(
    settings: model.SocksInboundSettings | None = None, **fields: Any
) -> model.Inbound:
    """A vtrio socks inbound ``socks-in`` on a free loopback port, for these
    clients to enter; ``fields`` set the rest of the inbound."""
    return model.Inbound(
        **{
            "tag": "socks-in",
            "protocol": "socks",
            "listen": "127.0.0.1",
            "ports": (0,),
            "settings": settings or model.SocksInboundSettings(),
            **fields,
        }
    )


async def send_and_read_to_end(
    stream: trio.abc.HalfCloseableStream, data: bytes
) -> bytes:
    """Send ``data``, half-close, and return everything read until EOF."""
    await stream.send_all(data)
    await stream.send_eof()
    received = bytearray()
    while chunk := await stream.receive_some(65536):
        received += chunk
    return bytes(received)


async def echo_through(
    proxy_host: str, proxy_port: int, host: str, port: int, data: bytes
) -> bytes:
    """Send ``data`` to an echo target through the SOCKS5 proxy; what came
    back, up to as many bytes (fewer if the tunnel closed first)."""
    stream = await open_connect(proxy_host, proxy_port, host, port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        while len(received) < len(data):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
        return bytes(received)
