"""Inbounds: listeners, the per-connection error boundary, the vmess handler.

Theory of operation: :func:`serve_ports` binds an inbound's ports, reports
them through ``task_status.started`` and runs an accept loop per listener that
spawns handlers into the server's *connections* nursery, so tunnels outlive
their listener during a graceful shutdown. :func:`handle_connection` is the one
broad catch of the runtime: whatever a peer does, it logs one line and closes
that connection, and the server keeps running.

The vmess handler runs the transport's server side (TLS/WebSocket) and the
VMess header under the handshake deadline. A failed handshake is answered with
silence: the bytes the core asks for are read and dropped (the anti-probing
drain of spec 9.1), then the connection is closed, on every failure branch.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import (
    DokodemoInboundSettings,
    HttpInboundSettings,
    SocksInboundSettings,
    VMessInboundSettings,
    is_unix_name,
)
from vtrio.errors import DialError, RemoteProtocolError, VtrioError
from vtrio.net import transport
from vtrio.net.clock import unix_now
from vtrio.net.http_proxy import handle_http
from vtrio.net.mux import serve_mux
from vtrio.net.outbound import Destination, Session
from vtrio.net.relay import Traffic
from vtrio.net.sniffing import sniffed_route, wants_sniffing
from vtrio.net.socks import handle_socks
from vtrio.net.transport.h2 import H2Tunnel, flavor_of, serve_h2
from vtrio.net.transport.proxy_protocol import receive_proxy_header
from vtrio.net.transport.tcp import (
    TCPListener,
    TCPStream,
    address_name,
    close_forcefully,
    tcp_under,
)
from vtrio.net.transport.transparent import original_destination
from vtrio.net.tunnel import run_tunnel
from vtrio.net.vmess_stream import VMessDatagramChannel, VMessStream
from vtrio.protocol import packetaddr
from vtrio.protocol.address import parse_address
from vtrio.protocol.connection import ServerConnection
from vtrio.protocol.events import Rejected
from vtrio.protocol.instruction import Command
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import Inbound
    from vtrio.net.context import ServerContext
    from vtrio.net.dynamic_port import DetourPorts
    from vtrio.net.outbound import Dispatcher, PacketConnection
    from vtrio.protocol.address import Address
    from vtrio.protocol.events import RequestHeader
    from vtrio.protocol.sniff import Sniffed

LOGGER = logging.getLogger("vtrio.net.inbound")
# Accept failures that end when descriptors or memory free up.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_PAUSE = 0.1
# A balancer sends its PROXY header at once; the handshake's default bound.
PROXY_HEADER_TIMEOUT = 4.0


def _peer_name(stream: trio.abc.Stream) -> str:
    if isinstance(stream, TCPStream) and stream.peer is not None:
        return address_name(stream.peer)
    return "?"


def _looks_like(data: bytes) -> str:
    """A hint for the log when the first bytes belong to another protocol."""
    if data[:1] == b"\x16" and data[1:2] == b"\x03":
        return " (looks like TLS: wrong transport or security setting?)"
    head = data.split(b" ", 1)[0]
    if head in (b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"):
        return " (looks like HTTP: wrong transport, or a WebSocket client?)"
    return ""


async def handle_connection(
    handler: Callable[[trio.abc.Stream, str], Awaitable[None]],
    inbound_tag: str,
    stream: trio.abc.Stream,
    proxy_protocol: bool = False,
    *,
    source: str | None = None,
) -> None:
    """The error boundary of one accepted connection (or of one tunnel of a
    connection that carries several, ``source`` naming its client).

    Nothing a peer does escapes it: protocol, transport and dial errors are
    logged in one line, anything else with a traceback, and the stream is
    always closed. Cancellation passes through. With ``proxy_protocol`` the
    connection's PROXY header is taken off first, and the client it names
    is the source the handler sees and logs.
    """
    if source is None:
        source = _peer_name(stream)
    try:
        if proxy_protocol:
            assert isinstance(stream, TCPStream)
            with trio.fail_after(PROXY_HEADER_TIMEOUT):
                named = await receive_proxy_header(stream)
            if named is not None:
                source = address_name(named)
        await handler(stream, source)
    except* trio.TooSlowError:
        LOGGER.info("%s [%s]: handshake timed out", source, inbound_tag)
    except* (
        VtrioError,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        OSError,
    ) as group:
        LOGGER.info(
            "%s [%s]: %s",
            source,
            inbound_tag,
            "; ".join(str(exc) or type(exc).__name__ for exc in group.exceptions),
        )
    except* Exception:
        LOGGER.exception("%s [%s]: unexpected error", source, inbound_tag)
    finally:
        await close_forcefully(stream)


class VMessHandler:
    """Serves the vmess protocol for one inbound (or one detour port)."""

    def __init__(
        self,
        context: ServerContext,
        inbound: Inbound,
        settings: VMessInboundSettings,
        validator: UserValidator,
        detour: DetourPorts | None = None,
    ) -> None:
        self._context = context
        self._inbound = inbound
        self._settings = settings
        self._validator = validator
        self._detour = detour

    async def __call__(self, raw: trio.abc.Stream, source: str) -> None:
        context = self._context
        settings = self._inbound.stream
        deadline = trio.current_time() + context.handshake_timeout()
        assert isinstance(raw, TCPStream)
        with trio.CancelScope(deadline=deadline) as scope:
            stream = await transport.accept_stream(settings, raw)
        if scope.cancelled_caught:
            context.log_rejection(source, self._inbound.tag, "handshake timed out")
            return
        if settings.network not in ("grpc", "h2"):
            await self._serve(stream, raw, source, deadline)
            return

        async def serve_call(call: H2Tunnel) -> None:
            # Each call behind its own error boundary: one broken tunnel
            # leaves the connection's others running.
            await handle_connection(
                lambda _stream, _source: self._serve(call, raw, source),
                self._inbound.tag,
                call,
                source=source,
            )

        await serve_h2(
            flavor_of(settings), stream, serve_call, context.handshake_timeout()
        )

    async def _serve(
        self,
        stream: trio.abc.HalfCloseableStream,
        raw: trio.abc.Stream,
        source: str,
        deadline: float | None = None,
    ) -> None:
        """One VMess tunnel on ``stream`` (a connection's layers, or one
        HTTP/2 stream of it), its header due by ``deadline`` (default: the
        handshake timeout from now)."""
        context = self._context
        tag = self._inbound.tag
        if deadline is None:
            deadline = trio.current_time() + context.handshake_timeout()
        rejected = False
        with trio.CancelScope(deadline=deadline) as scope:
            connection = ServerConnection(
                self._validator,
                now=unix_now(),
                random=os.urandom,
                disable_insecure_encryption=self._settings.disable_insecure_encryption,
                aead_forced=self._settings.aead_forced,
            )
            try:
                vmess, request = await VMessStream.accept(stream, connection)
                if isinstance(request, Rejected):
                    reason = request.reason + _looks_like(vmess.first_bytes)
                    context.log_rejection(source, tag, reason)
                    rejected = True
                    await _drain(stream, request.drain)
            except BaseException:
                await transport.refuse_unanswered(stream)
                raise
            if rejected:
                await transport.refuse_unanswered(stream)
                return
        if scope.cancelled_caught:
            # A drain that the deadline ends was logged as its rejection.
            if not rejected:
                context.log_rejection(source, tag, "handshake timed out")
            return
        # The scope was not cancelled, so the header was accepted.
        assert not isinstance(request, Rejected)
        user = request.user
        session = context.session(
            self._inbound, source, raw, level=user.level, email=user.email
        )
        if self._detour is not None:
            vmess.response_command = self._detour.switch_account(user, now=unix_now())
        if request.command is Command.MUX:
            async with trio.open_nursery() as nursery:
                dispatch = MuxRouting(context.dispatcher, session, nursery)
                await serve_mux(
                    vmess, dispatch, session_idle=context.policy(user.level).conn_idle
                )
                nursery.cancel_scope.cancel()
            return
        assert request.address is not None
        if request.command is Command.UDP:
            await _serve_udp(context, vmess, request, session)
            return
        try:
            await run_tunnel(
                context,
                vmess,
                Destination(request.address, request.port, "tcp"),
                session,
            )
        except Exception:
            await vmess.flush_header()
            raise


class MuxRouting:
    """The Mux server's view of the dispatcher, bound to one VMess tunnel;
    sub-sessions are sniffed as the inbound's own tunnels are."""

    def __init__(
        self, dispatcher: Dispatcher, session: Session, nursery: trio.Nursery
    ) -> None:
        self._dispatcher = dispatcher
        self._session = session
        self._nursery = nursery
        self.sniffs = session.sniffing is not None

    async def dial_tcp(
        self, address: Address, port: int, sniffed: Sniffed | None = None
    ) -> trio.abc.HalfCloseableStream:
        destination = route = Destination(address, port, "tcp")
        session = self._session
        if session.sniffing is not None and wants_sniffing(
            destination, session.sniffing
        ):
            destination, route, protocol = sniffed_route(
                sniffed, destination, session.sniffing
            )
            # Each sub-session has its own protocol; the tunnel's is shared.
            session = dataclasses.replace(session, protocol=protocol)
        handler = await self._dispatcher.route(session, route)
        return await self._dispatcher.connect(handler, destination)

    async def open_udp(self, address: Address, port: int) -> PacketConnection:
        return await self._dispatcher.open_udp(
            Destination(address, port, "udp"), self._session, self._nursery
        )


async def _drain(stream: trio.abc.Stream, size: int) -> None:
    """Read and drop ``size`` bytes (or until EOF), then return; never write."""
    while size > 0:
        data = await stream.receive_some(min(size, 4096))
        if not data:
            return
        size -= len(data)


async def _serve_udp(
    context: ServerContext,
    vmess: VMessStream,
    request: RequestHeader,
    session: Session,
) -> None:
    """UDP over VMess (command 2): one destination, one datagram per chunk."""
    assert request.address is not None
    destination = Destination(request.address, request.port, "udp")
    channel = VMessDatagramChannel.from_stream(vmess)
    traffic = Traffic()
    idle = context.policy(session.level).conn_idle
    routed_to: list[str] = []  # the outbound's tag, once routed (after sniffing)
    try:
        async with trio.open_nursery() as nursery:
            outbound = await context.dispatcher.open_udp(
                destination,
                session,
                nursery,
                lambda handler: routed_to.append(handler.tag),
            )
            framing = (
                _AddressPerDatagram()
                if request.address == packetaddr.MAGIC_DOMAIN
                else _FixedDestination(destination)
            )
            try:
                await _relay_datagrams(channel, outbound, framing, idle, traffic)
            finally:
                with trio.CancelScope(shield=True):
                    await outbound.aclose()
            nursery.cancel_scope.cancel()
    finally:
        context.log_access(session, destination, "".join(routed_to[-1:]), traffic)


class _FixedDestination:
    """Command 2 as designed: every datagram goes to the request's destination."""

    def __init__(self, destination: Destination) -> None:
        self._destination = destination

    def unpack(self, datagram: bytes) -> tuple[Address, int, bytes]:
        return self._destination.address, self._destination.port, datagram

    def pack(self, payload: bytes, source: Address, port: int) -> bytes | None:
        del source, port
        return payload


class _AddressPerDatagram:
    """packetaddr: each datagram names its destination; replies their source."""

    @staticmethod
    def unpack(datagram: bytes) -> tuple[Address, int, bytes]:
        return packetaddr.unpack_datagram(datagram)

    @staticmethod
    def pack(payload: bytes, source: Address, port: int) -> bytes | None:
        if isinstance(source, str):
            return None
        return packetaddr.pack_datagram(source, port, payload)


async def _relay_datagrams(
    channel: VMessDatagramChannel,
    outbound: PacketConnection,
    framing: _FixedDestination | _AddressPerDatagram,
    idle: float,
    traffic: Traffic,
) -> None:
    """Datagrams both ways until the client ends the tunnel or it goes idle."""
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + idle
        async with trio.open_nursery() as nursery:

            async def downlink() -> None:
                while True:
                    payload, source, port = await outbound.receive_from()
                    scope.deadline = trio.current_time() + idle
                    traffic.down += len(payload)
                    datagram = framing.pack(payload, source, port)
                    if datagram is not None:
                        await channel.send(datagram)

            nursery.start_soon(downlink)
            while (datagram := await channel.receive()) is not None:
                scope.deadline = trio.current_time() + idle
                try:
                    address, port, payload = framing.unpack(datagram)
                    traffic.up += len(payload)
                    await outbound.send_to(payload, address, port)
                except (RemoteProtocolError, DialError, OSError) as exc:
                    LOGGER.debug("UDP datagram dropped: %s", exc)
            nursery.cancel_scope.cancel()


async def _handle_dokodemo(
    context: ServerContext,
    inbound: Inbound,
    settings: DokodemoInboundSettings,
    stream: trio.abc.Stream,
    source: str,
) -> None:
    destination = _dokodemo_destination(inbound, settings, stream)
    await run_tunnel(
        context,
        stream,
        destination,
        context.session(inbound, source, stream, level=settings.level),
    )


def _dokodemo_destination(
    inbound: Inbound, settings: DokodemoInboundSettings, stream: trio.abc.Stream
) -> Destination:
    """Where a dokodemo-door connection goes: with followRedirect, where the
    client dialled before the firewall diverted it, else (or when it was not
    diverted) the portMap entry of the port it came in on, or the
    configured address.

    Raises:
        DialError: neither is known.
    """
    tcp = tcp_under(stream) if settings.follow_redirect or settings.port_map else None
    if tcp is not None and settings.follow_redirect:
        original = original_destination(tcp.socket, inbound.stream.tproxy)
        if original is not None:
            host, port = original
            return Destination(parse_address(host), port, "tcp")
    local_port = int(tcp.socket.getsockname()[1]) if tcp is not None else None
    target = settings.target(local_port)
    if target is None:
        raise DialError(
            "no destination: the connection was not redirected and neither"
            " portMap nor the inbound's address and port give one"
        )
    return Destination(parse_address(target[0]), target[1], "tcp")


def make_handler(
    context: ServerContext, inbound: Inbound, detour: DetourPorts | None = None
) -> Callable[[trio.abc.Stream, str], Awaitable[None]]:
    """The connection handler of an inbound (a detour target's are built per port).

    Args:
        context: the running server.
        inbound: the inbound.
        detour: for a vmess inbound with ``detour.to``, the target's ports.
    """
    settings = inbound.settings
    if isinstance(settings, VMessInboundSettings):
        validator = UserValidator(settings.users, now=unix_now())
        return VMessHandler(context, inbound, settings, validator, detour)
    if isinstance(settings, SocksInboundSettings):
        return functools.partial(handle_socks, context, inbound, settings)
    if isinstance(settings, HttpInboundSettings):
        return functools.partial(handle_http, context, inbound, settings)
    return functools.partial(_handle_dokodemo, context, inbound, settings)


async def serve_ports(
    handler: Callable[[trio.abc.Stream, str], Awaitable[None]],
    inbound: Inbound,
    ports: tuple[int, ...],
    connections: trio.Nursery,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``ports`` of ``inbound`` until cancelled.

    Handlers run in ``connections``, so cancelling this task closes only the
    listeners. Reports the bound (host, port) pairs. ``reuse_port`` lets
    worker processes share the ports.

    Raises:
        OSError: a port could not be bound.
    """
    listeners: list[TCPListener] = []
    for port in ports:
        listeners += await transport.open_listeners(
            inbound.stream,
            inbound.listen,
            port,
            reuse_port=reuse_port,
            # A dokodemo-door target may speak first (SMTP, SSH banners).
            defer_accept=inbound.protocol != "dokodemo-door",
            mode=inbound.socket_mode,
        )
    bound = [listener.address() for listener in listeners]
    LOGGER.info(
        "inbound %s (%s) listening on %s",
        inbound.tag or "-",
        inbound.protocol,
        ", ".join(
            host if is_unix_name(host) else f"{host}:{port}" for host, port in bound
        ),
    )
    task_status.started(bound)
    try:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(
                    _accept_loop,
                    listener,
                    handler,
                    inbound.tag,
                    connections,
                    inbound.stream.accept_proxy_protocol,
                )
    finally:
        # Not aclose: under cancellation its checkpoint would raise after the
        # first listener and leave the others open.
        for listener in listeners:
            listener.close()


async def _accept_loop(
    listener: TCPListener,
    handler: Callable[[trio.abc.Stream, str], Awaitable[None]],
    inbound_tag: str,
    connections: trio.Nursery,
    proxy_protocol: bool,
) -> None:
    """``trio.serve_listeners`` for one listener, closing with ``close()``.

    Out of descriptors or memory, accepting pauses for a moment (as trio's
    loop does) rather than failing the listener.
    """
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            LOGGER.error(
                "inbound %s: cannot accept (%s); pausing %.1f s",
                inbound_tag or "-",
                errno.errorcode.get(exc.errno or 0, exc),
                ACCEPT_PAUSE,
            )
            await trio.sleep(ACCEPT_PAUSE)
            continue
        connections.start_soon(
            handle_connection, handler, inbound_tag, stream, proxy_protocol
        )
