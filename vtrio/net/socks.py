"""The SOCKS inbound: SOCKS5 CONNECT and UDP ASSOCIATE (RFC 1928, RFC 1929),
and SOCKS4/4a CONNECT, as v2ray's socks inbound serves them.

Theory of operation: the handshake is read from a :class:`BufferedStream`, so
bytes a client pipelines behind its request are kept for the relay. CONNECT
dials the routed outbound and answers with the matching reply code (refused,
unreachable, general failure). UDP ASSOCIATE binds a UDP socket next to the
TCP one; each datagram names its own destination, and the association lives
as long as the client keeps the TCP connection open (RFC 1928 section 7).
SOCKS4 has no authentication, so an inbound that asks for a password
refuses it, like v2ray. A connection that starts with neither version byte
is served as an HTTP proxy request with the same accounts, as Xray's socks
(and ``mixed``) inbound does.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import HttpInboundSettings
from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.http_proxy import handle_http
from vtrio.net.outbound import Destination, Session
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.transport.tcp import TCPStream
from vtrio.net.tunnel import run_tunnel
from vtrio.protocol.address import parse_address

if TYPE_CHECKING:
    from vtrio.config.model import Inbound, SocksInboundSettings
    from vtrio.net.context import ServerContext
    from vtrio.net.outbound import PacketConnection
    from vtrio.protocol.address import Address

LOGGER = logging.getLogger("vtrio.net.socks")

VERSION = 5
SOCKS4_VERSION = 4
SOCKS4_GRANTED, SOCKS4_REJECTED = 90, 91
# A SOCKS4 user id or 4a host name ends with NUL within this many bytes.
SOCKS4_FIELD_LIMIT = 255
NO_AUTH, PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT, BIND, UDP_ASSOCIATE = 1, 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
SUCCEEDED, GENERAL_FAILURE, NETWORK_UNREACHABLE, HOST_UNREACHABLE = 0, 1, 3, 4
CONNECTION_REFUSED, COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 5, 7, 8
MAX_DATAGRAM = 65535
UNSPECIFIED = ipaddress.IPv4Address(0)


def pack_socks_address(address: Address, port: int) -> bytes:
    """ATYP, address and port as SOCKS5 writes them (port last)."""
    if isinstance(address, ipaddress.IPv4Address):
        head = bytes((ATYP_IPV4,)) + address.packed
    elif isinstance(address, ipaddress.IPv6Address):
        head = bytes((ATYP_IPV6,)) + address.packed
    else:
        raw = address.encode("idna")
        head = bytes((ATYP_DOMAIN, len(raw))) + raw
    return head + struct.pack("!H", port)


def unpack_socks_address(data: bytes, offset: int) -> tuple[Address, int, int]:
    """Address, port and the offset past them.

    Raises:
        RemoteProtocolError: unknown type or truncated.
    """
    try:
        atyp = data[offset]
        if atyp == ATYP_IPV4:
            address: Address = ipaddress.IPv4Address(data[offset + 1 : offset + 5])
            end = offset + 5
        elif atyp == ATYP_IPV6:
            address = ipaddress.IPv6Address(data[offset + 1 : offset + 17])
            end = offset + 17
        elif atyp == ATYP_DOMAIN:
            length = data[offset + 1]
            end = offset + 2 + length
            address = parse_address(data[offset + 2 : end].decode("idna"))
        else:
            raise RemoteProtocolError(f"SOCKS address type {atyp} is unknown")
        (port,) = struct.unpack_from("!H", data, end)
    except (IndexError, struct.error, UnicodeError, ValueError) as exc:
        raise RemoteProtocolError("truncated SOCKS address") from exc
    return address, port, end + 2


def _first_errno(exc: BaseException | None) -> int | None:
    """The errno behind a dial failure, looking through causes and groups
    (``trio.open_tcp_stream`` raises one OSError for all its attempts)."""
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[-1]
        else:
            exc = exc.__cause__
    return None


def reply_code(exc: BaseException) -> int:
    """The SOCKS reply for a failed dial."""
    if isinstance(exc.__cause__, socket.gaierror):
        return HOST_UNREACHABLE
    return {
        errno.ECONNREFUSED: CONNECTION_REFUSED,
        errno.ENETUNREACH: NETWORK_UNREACHABLE,
        errno.EHOSTUNREACH: HOST_UNREACHABLE,
        errno.ETIMEDOUT: HOST_UNREACHABLE,
    }.get(_first_errno(exc) or 0, GENERAL_FAILURE)


def _reply(code: int, address: Address = UNSPECIFIED, port: int = 0) -> bytes:
    return bytes((VERSION, code, 0)) + pack_socks_address(address, port)


def _socks4_reply(code: int) -> bytes:
    return bytes((0, code)) + bytes(6)  # port and address unused, as v2ray


async def _socks4_request(
    stream: BufferedStream, settings: SocksInboundSettings
) -> tuple[int, Address, int]:
    """Command, address and port of a SOCKS4/4a request.

    Raises:
        RemoteProtocolError: a password is required, or a field is too long.
    """
    _version, command, port_high, port_low, *ip = await stream.receive_exactly(8)
    address: Address = ipaddress.IPv4Address(bytes(ip))
    try:
        await stream.receive_until(b"\0", SOCKS4_FIELD_LIMIT)  # user id: unused
        if ip[0] == 0:  # 4a: 0.0.0.x, the host name follows
            host = await stream.receive_until(b"\0", SOCKS4_FIELD_LIMIT)
            address = parse_address(host[:-1].decode("idna"))
    except (ValueError, UnicodeError) as exc:
        raise RemoteProtocolError(f"bad SOCKS4 request: {exc}") from exc
    if settings.auth == "password":
        await stream.send_all(_socks4_reply(SOCKS4_REJECTED))
        raise RemoteProtocolError("SOCKS4 has no password; this inbound needs one")
    return command, address, port_high << 8 | port_low


async def _socks5_request(
    stream: BufferedStream, settings: SocksInboundSettings
) -> tuple[int, Address, int]:
    """Command, address and port of a SOCKS5 request, after the method
    negotiation."""
    await _authenticate(stream, settings)
    _version, command, _ = await stream.receive_exactly(3)
    head = await stream.receive_exactly(2)
    if head[0] == ATYP_IPV4:
        rest = await stream.receive_exactly(4 + 2 - 1)
    elif head[0] == ATYP_IPV6:
        rest = await stream.receive_exactly(16 + 2 - 1)
    else:
        rest = await stream.receive_exactly(head[1] + 2)
    address, port, _ = unpack_socks_address(head + rest, 0)
    return command, address, port


async def _authenticate(stream: BufferedStream, settings: SocksInboundSettings) -> None:
    _version, count = await stream.receive_exactly(2)
    methods = await stream.receive_exactly(count)
    wanted = PASSWORD if settings.auth == "password" else NO_AUTH
    if wanted not in methods:
        await stream.send_all(bytes((VERSION, NO_ACCEPTABLE)))
        raise RemoteProtocolError("the client offers no acceptable SOCKS method")
    await stream.send_all(bytes((VERSION, wanted)))
    if wanted == NO_AUTH:
        return
    _, user_length = await stream.receive_exactly(2)
    user = await stream.receive_exactly(user_length)
    (password_length,) = await stream.receive_exactly(1)
    password = await stream.receive_exactly(password_length)
    ok = any(account.matches(user, password) for account in settings.accounts)
    await stream.send_all(bytes((1, 0 if ok else 1)))
    if not ok:
        raise RemoteProtocolError("SOCKS user name or password is wrong")


async def handle_socks(
    context: ServerContext,
    inbound: Inbound,
    settings: SocksInboundSettings,
    raw: trio.abc.Stream,
    source: str,
) -> None:
    """Serve one SOCKS (or HTTP proxy) client until its tunnel or
    association ends."""
    stream = BufferedStream(raw)
    request: tuple[int, Address, int] | None = None
    with trio.fail_after(context.handshake_timeout()):
        (version,) = await stream.peek(1)
        if version == VERSION:
            request = await _socks5_request(stream, settings)
        elif version == SOCKS4_VERSION:
            request = await _socks4_request(stream, settings)
    if request is None:  # HTTP, under its own handshake deadline
        accounts = settings.accounts if settings.auth == "password" else ()
        http = HttpInboundSettings(accounts=accounts, level=settings.level)
        await handle_http(context, inbound, http, stream, source)
        return
    command, address, port = request
    session = context.session(inbound, source, raw, level=settings.level)
    socks4 = version == SOCKS4_VERSION
    if command == CONNECT:

        async def connected() -> None:
            await stream.send_all(
                _socks4_reply(SOCKS4_GRANTED) if socks4 else _reply(SUCCEEDED)
            )

        async def failed(exc: Exception) -> None:
            # SOCKS4 has one code for every failure.
            await stream.send_all(
                _socks4_reply(SOCKS4_REJECTED) if socks4 else _reply(reply_code(exc))
            )

        await run_tunnel(
            context,
            stream,
            Destination(address, port, "tcp"),
            session,
            on_connected=connected,
            on_failed=failed,
        )
    elif socks4:  # BIND
        await stream.send_all(_socks4_reply(SOCKS4_REJECTED))
    elif command == UDP_ASSOCIATE and settings.udp:
        await _associate(context, settings, stream, raw, session)
    else:
        await stream.send_all(_reply(COMMAND_NOT_SUPPORTED))


async def _associate(
    context: ServerContext,
    settings: SocksInboundSettings,
    control: BufferedStream,
    raw: trio.abc.Stream,
    session: Session,
) -> None:
    """Relay datagrams until the control connection closes."""
    local_host = "127.0.0.1"
    client_host = ""
    if isinstance(raw, TCPStream):
        local_host = str(raw.socket.getsockname()[0])
        client_host = str(raw.socket.getpeername()[0])
    family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
    udp = trio.socket.socket(family, socket.SOCK_DGRAM)
    with udp:
        await udp.bind((local_host, 0))
        bound_port = udp.getsockname()[1]
        announced = parse_address(settings.ip or local_host)
        await control.send_all(_reply(SUCCEEDED, announced, bound_port))
        async with trio.open_nursery() as nursery:
            relay = _DatagramRelay(context, session, udp, client_host, nursery)
            try:
                nursery.start_soon(relay.uplink)
                # The association ends when the client closes its TCP connection.
                while await control.receive_some(1024):
                    pass
                nursery.cancel_scope.cancel()
            finally:
                await relay.close()


class _DatagramRelay:
    """Client datagrams out through the routed outbound, replies back."""

    def __init__(
        self,
        context: ServerContext,
        session: Session,
        udp: trio.socket.SocketType,
        client_host: str,
        nursery: trio.Nursery,
    ) -> None:
        self._context = context
        self._session = session
        self._udp = udp
        self._client_host = client_host
        self._client: tuple[str, int] | None = None
        self._nursery = nursery
        self._outbound: PacketConnection | None = None

    async def uplink(self) -> None:
        while True:
            data, sender = await self._udp.recvfrom(MAX_DATAGRAM)
            if self._client_host and sender[0] != self._client_host:
                continue  # only the associated client may use this socket
            self._client = (str(sender[0]), int(sender[1]))
            if len(data) < 4 or data[2] != 0:
                continue  # fragments are not supported (RFC 1928 allows dropping)
            try:
                address, port, offset = unpack_socks_address(data, 3)
            except RemoteProtocolError:
                continue
            if self._outbound is None:
                self._outbound = await self._context.dispatcher.open_udp(
                    Destination(address, port, "udp"), self._session, self._nursery
                )
                self._nursery.start_soon(self.downlink, self._outbound)
            try:
                await self._outbound.send_to(data[offset:], address, port)
            except (DialError, OSError) as exc:
                LOGGER.debug("UDP to %s:%d failed: %s", address, port, exc)

    async def downlink(self, outbound: PacketConnection) -> None:
        while True:
            payload, address, port = await outbound.receive_from()
            header = b"\x00\x00\x00" + pack_socks_address(address, port)
            if self._client is not None:
                await self._udp.sendto(header + payload, self._client)

    async def close(self) -> None:
        if self._outbound is not None:
            with trio.CancelScope(shield=True):
                await self._outbound.aclose()
