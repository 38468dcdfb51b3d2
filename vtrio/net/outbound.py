"""Outbounds: where a tunnel's traffic leaves (freedom, blackhole, vmess).

Theory of operation: every inbound, after its handshake, knows a
:class:`Destination` and a :class:`Session` (who asked, through which inbound).
The :class:`Dispatcher` routes it (``vtrio.routing``) to one outbound handler,
which returns a Trio stream for TCP or a :class:`PacketConnection` for UDP.
Handlers raise :class:`DialError` when they cannot reach the destination, so
inbounds can answer with the right reply code (a SOCKS error, an HTTP 502).

UDP keeps a destination per datagram (SOCKS UDP ASSOCIATE, XUDP). A VMess UDP
request carries one fixed destination (command 2), so the vmess outbound opens
one VMess connection per destination it is asked to reach.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import trio

from vtrio import routing
from vtrio.config.model import (
    BlackholeSettings,
    FreedomSettings,
    Sniffing,
    VMessOutboundSettings,
)
from vtrio.errors import DialError
from vtrio.net import transport
from vtrio.net.dynamic_port import DynamicServers, Endpoint
from vtrio.net.mux_client import MuxPool
from vtrio.net.sniffing import SniffedPackets, wants_sniffing
from vtrio.net.transport.h2 import H2Client, flavor_of
from vtrio.net.transport.transparent import set_mark
from vtrio.net.vmess_stream import VMessDatagramChannel, VMessStream
from vtrio.protocol.address import Address, parse_address
from vtrio.protocol.commands import SwitchAccount
from vtrio.protocol.instruction import Command, Request
from vtrio.protocol.mux import Network

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from vtrio.config.model import (
        Balancer,
        Config,
        IPNetwork,
        Outbound,
        RoutingRule,
        StreamSettings,
    )

LOGGER = logging.getLogger("vtrio.net.outbound")
# The domains a UDP flow keeps resolved (a flow may name one per datagram).
RESOLVED_PER_FLOW = 256

# How long an outbound may take to connect (v2ray's dialer uses 16 s).
CONNECT_TIMEOUT = 16.0
# How long routing waits for a domain's addresses (IPIfNonMatch, IPOnDemand).
ROUTING_LOOKUP_TIMEOUT = 4.0
# Datagrams waiting to be read from a UDP outbound.
PACKET_BACKLOG = 64
MAX_DATAGRAM = 65535


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a client wants to go."""

    address: Address
    port: int
    network: Literal["tcp", "udp"] = "tcp"

    @property
    def host(self) -> str:
        """The address as text (IPs without brackets)."""
        return str(self.address)

    def __str__(self) -> str:
        if isinstance(self.address, ipaddress.IPv6Address):
            return f"{self.network}:[{self.address}]:{self.port}"
        return f"{self.network}:{self.address}:{self.port}"


@dataclass(slots=True)
class Session:
    """Who opened a tunnel: for routing, policy and the access log."""

    inbound_tag: str
    source: str
    email: str = ""
    level: int = 0
    started: float = field(default_factory=time.monotonic)
    # The inbound's sniffing, and the protocol it found (for routing).
    sniffing: Sniffing | None = None
    protocol: str = ""
    # The "host:port" the connection came in on, when a rule asks for it.
    local: str = ""


class PacketConnection(Protocol):
    """A UDP socket of the outbound side, with a destination per datagram."""

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        """Send one datagram to ``address:port`` (a domain is resolved)."""

    async def receive_from(self) -> tuple[bytes, Address, int]:
        """The next datagram and the address and port it came from."""

    async def aclose(self) -> None:
        """Release the socket."""


class OutboundHandler(Protocol):
    """One configured outbound."""

    tag: str

    async def dial_tcp(self, destination: Destination) -> trio.abc.HalfCloseableStream:
        """A stream to the destination.

        Raises:
            DialError: it could not be reached.
        """

    async def open_udp(
        self, destination: Destination, nursery: trio.Nursery
    ) -> PacketConnection:
        """A packet connection whose first datagram goes to ``destination``.

        Tasks it needs run in ``nursery`` (the tunnel's own).
        """


# --- freedom ------------------------------------------------------------------


async def _resolve(host: str, port: int, family: int = 0) -> tuple[str, int]:
    """The first address ``host`` resolves to, as a sockaddr-like pair."""
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, family=family, type=socket.SOCK_DGRAM
        )
    except OSError as exc:
        raise DialError(f"cannot resolve {host}: {exc}") from exc
    if not infos:
        raise DialError(f"{host} has no address")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


async def _addresses(host: str) -> tuple[routing.IPAddress, ...]:
    """Every address ``host`` resolves to, for routing; none when it does not
    resolve in time (then IP rules do not match it, as in v2ray)."""
    with trio.move_on_after(ROUTING_LOOKUP_TIMEOUT):
        try:
            infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            LOGGER.debug("routing: cannot resolve %s: %s", host, exc)
            return ()
        return tuple(dict.fromkeys(_unmap(str(info[4][0])) for info in infos))
    LOGGER.debug("routing: resolving %s timed out", host)
    return ()


def _mapped(text: str) -> ipaddress.IPv6Address:
    """An address as a dual-stack IPv6 socket writes it."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}")
    return address


def _unmap(text: str) -> routing.IPAddress:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _local_address(send_through: IPNetwork | None) -> str | None:
    """The address a connection leaves from: sendThrough's, or for a network a
    random one in it (Xray spreads connections over an IPv6 block so)."""
    if send_through is None:
        return None
    if send_through.num_addresses == 1:
        return str(send_through.network_address)
    return str(send_through[random.randrange(send_through.num_addresses)])


class _UDPSocket:
    """A dual-stack UDP socket: one per tunnel, any destination per datagram."""

    def __init__(
        self, family_strategy: int, local: str | None = None, mark: int = 0
    ) -> None:
        self._sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if mark:
            set_mark(self._sock, mark)
        self._family = family_strategy
        # An IPv4 sendThrough binds its mapped form: then only IPv4 is reached.
        self._local = "::" if local is None else str(_mapped(local))
        # Each domain is resolved once per flow, not once per datagram.
        self._resolved: dict[tuple[str, int], tuple[str, int]] = {}

    async def bind(self) -> None:
        await self._sock.bind((self._local, 0))

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        if isinstance(address, str):
            resolved = self._resolved.get((address, port))
            if resolved is None:
                resolved = await _resolve(address, port, self._family)
                if len(self._resolved) >= RESOLVED_PER_FLOW:
                    self._resolved.clear()
                self._resolved[address, port] = resolved
            host, port = resolved
            target: Address = ipaddress.ip_address(host.split("%")[0])
        else:
            target = address
        await self._sock.sendto(payload, (str(_mapped(str(target))), port))

    async def receive_from(self) -> tuple[bytes, Address, int]:
        data, sockaddr = await self._sock.recvfrom(MAX_DATAGRAM)
        return data, _unmap(sockaddr[0]), int(sockaddr[1])

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


class Freedom:
    """Connects directly to the destination."""

    def __init__(
        self,
        tag: str,
        settings: FreedomSettings,
        send_through: IPNetwork | None = None,
        mark: int = 0,
    ) -> None:
        """``mark``: SO_MARK of every socket (the outbound's sockopt.mark)."""
        self.tag = tag
        self._settings = settings
        self._send_through = send_through
        self._mark = mark
        self._family = {
            "UseIPv4": socket.AF_INET,
            "UseIPv6": socket.AF_INET6,
        }.get(settings.domain_strategy, 0)

    def _target(self, destination: Destination) -> tuple[str, int]:
        redirect = self._settings.redirect
        if redirect:
            host, _, port = redirect.rpartition(":")
            return host.strip("[]") or destination.host, int(port or destination.port)
        return destination.host, destination.port

    async def dial_tcp(self, destination: Destination) -> trio.abc.HalfCloseableStream:
        host, port = self._target(destination)
        try:
            if self._family and isinstance(parse_address(host), str):
                host, _ = await _resolve(host, port, self._family)
            local = _local_address(self._send_through)
            return await transport.connect_tcp(host, port, local, self._mark)
        except OSError as exc:
            raise DialError(f"{host}:{port}: {exc.strerror or exc}") from exc

    async def open_udp(
        self, destination: Destination, nursery: trio.Nursery
    ) -> PacketConnection:
        del destination, nursery
        conn = _UDPSocket(self._family, _local_address(self._send_through), self._mark)
        await conn.bind()
        return conn


# --- blackhole ----------------------------------------------------------------

_HTTP_403 = (
    b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nCache-Control: max-age=3600,"
    b" public\r\nContent-Length: 0\r\n\r\n"
)


class _BlackholeStream(trio.abc.HalfCloseableStream):
    """Swallows what it is sent; answers with nothing or an HTTP 403, then EOF."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        out, self._answer = self._answer, b""
        return out

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _BlackholePackets:
    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_from(self) -> tuple[bytes, Address, int]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Blackhole:
    """Drops everything (with an optional HTTP 403 answer)."""

    def __init__(self, tag: str, settings: BlackholeSettings) -> None:
        self.tag = tag
        self._answer = _HTTP_403 if settings.response == "http" else b""

    async def dial_tcp(self, destination: Destination) -> trio.abc.HalfCloseableStream:
        del destination
        await trio.lowlevel.checkpoint()
        return _BlackholeStream(self._answer)

    async def open_udp(
        self, destination: Destination, nursery: trio.Nursery
    ) -> PacketConnection:
        del destination, nursery
        await trio.lowlevel.checkpoint()
        return _BlackholePackets()


# --- vmess --------------------------------------------------------------------


class DatagramTunnel(Protocol):
    """Datagrams to one destination: a VMess UDP tunnel or a Mux UDP
    sub-session."""

    async def send(self, payload: bytes) -> None: ...

    async def receive(self) -> bytes | None: ...

    async def aclose(self) -> None: ...


class _VMessPackets:
    """UDP through VMess: one UDP tunnel per destination, replies merged."""

    def __init__(self, outbound: VMessOutbound, nursery: trio.Nursery) -> None:
        self._outbound = outbound
        self._nursery = nursery
        self._tunnels: dict[tuple[Address, int], DatagramTunnel] = {}
        self._send, self._receive = trio.open_memory_channel[
            tuple[bytes, "Address", int]
        ](PACKET_BACKLOG)

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        key = (address, port)
        tunnel = self._tunnels.get(key)
        if tunnel is None:
            tunnel = await self._outbound.open_datagram_tunnel(
                Destination(address, port, "udp")
            )
            self._tunnels[key] = tunnel
            await tunnel.send(payload)
            self._nursery.start_soon(self._pump, tunnel, address, port)
            return
        await tunnel.send(payload)

    async def _pump(self, tunnel: DatagramTunnel, address: Address, port: int) -> None:
        try:
            while (payload := await tunnel.receive()) is not None:
                await self._send.send((payload, address, port))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            LOGGER.debug("UDP tunnel to %s:%d ended: %s", address, port, exc)

    async def receive_from(self) -> tuple[bytes, Address, int]:
        return await self._receive.receive()

    async def aclose(self) -> None:
        for tunnel in self._tunnels.values():
            await tunnel.aclose()
        self._tunnels.clear()
        await self._send.aclose()


class VMessOutbound:
    """Tunnels to VMess servers; picks a server and user per connection.

    Servers are taken round-robin and a failed dial moves on to the next one;
    a user is picked round-robin within the server. Accounts a server offers
    through SwitchAccount (dynamic port, spec section 8) are used for later
    connections while they are valid.
    """

    def __init__(
        self,
        tag: str,
        settings: VMessOutboundSettings,
        stream: StreamSettings,
        send_through: IPNetwork | None = None,
        mux_concurrency: int = 0,
        mux_udp: bool = True,
    ) -> None:
        """``mux_concurrency``: tunnels per Mux connection (0: no Mux);
        ``mux_udp``: UDP tunnels join them."""
        self.tag = tag
        self._stream_settings = stream
        self._send_through = send_through
        self._proxy: OutboundHandler | None = None
        self._mux = (
            MuxPool(self._dial_mux, mux_concurrency) if mux_concurrency else None
        )
        self._mux_udp = mux_udp
        self._h2 = (
            H2Client(flavor_of(stream), self._dial_transport)
            if stream.network in ("grpc", "h2")
            else None
        )
        self._endpoints = [
            DynamicServers(Endpoint(server.address, server.port, user))
            for server in settings.servers
            for user in server.users
        ]
        if not self._endpoints:
            raise DialError(f"vmess outbound {tag!r} has no server")
        self._turn = itertools.count()

    async def _dial(self, endpoint: Endpoint) -> trio.abc.Stream:
        if self._h2 is not None:
            return await self._h2.open(endpoint.host, endpoint.port)
        return await self._dial_transport(endpoint.host, endpoint.port)

    async def _dial_transport(
        self, host: str, port: int
    ) -> trio.abc.HalfCloseableStream:
        local = _local_address(self._send_through)
        through = self._through if self._proxy is not None else None
        return await transport.dial(self._stream_settings, host, port, local, through)

    def dial_through(self, proxy: OutboundHandler) -> None:
        """Reach the servers through ``proxy``'s tunnels (proxySettings)."""
        self._proxy = proxy

    async def _through(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        assert self._proxy is not None
        return await self._proxy.dial_tcp(Destination(parse_address(host), port, "tcp"))

    async def _connect(self) -> tuple[DynamicServers, Endpoint, trio.abc.Stream]:
        """Dial the servers in turn, under the caller's CONNECT_TIMEOUT.

        Every attempt but the last gets an equal share of that time, so a
        server that swallows connections still leaves time for the next one;
        the last attempt (the only one, usually) runs on what is left.
        """
        first = next(self._turn)
        count = len(self._endpoints)
        errors: list[str] = []
        for offset in range(count):
            servers = self._endpoints[(first + offset) % count]
            name = f"{servers.origin.host}:{servers.origin.port}"
            attempt = servers.dial(self._dial, now=time.monotonic())
            try:
                if offset == count - 1:  # the caller's timeout bounds it
                    return servers, *await attempt
                with trio.move_on_after(CONNECT_TIMEOUT / count):
                    return servers, *await attempt
                errors.append(f"{name}: connect timed out")
            except (OSError, DialError) as exc:
                errors.append(f"{name}: {exc}")
        raise DialError("no vmess server reachable (" + "; ".join(errors) + ")")

    def run_in(self, nursery: trio.Nursery) -> None:
        """Where this outbound's shared connections run: Mux (until then each
        tunnel gets a connection of its own), gRPC and HTTP/2."""
        if self._mux is not None:
            self._mux.run_in(nursery)
        if self._h2 is not None:
            self._h2.run_in(nursery)

    async def _dial_mux(self) -> trio.abc.Stream:
        _, endpoint, stream = await self._connect()
        return VMessStream.client(stream, endpoint.user, Request(Command.MUX))

    async def dial_tcp(self, destination: Destination) -> trio.abc.HalfCloseableStream:
        if self._mux is not None and self._mux.running:
            return await self._mux.open(destination.address, destination.port)
        servers, endpoint, stream = await self._connect()
        tunnel = VMessStream.client(
            stream,
            endpoint.user,
            Request(Command.TCP, destination.address, destination.port),
        )

        def learn(command: object) -> None:
            if isinstance(command, SwitchAccount):
                servers.learn(command, endpoint, time.monotonic())

        tunnel.on_response = learn
        return tunnel

    async def open_datagram_tunnel(self, destination: Destination) -> DatagramTunnel:
        """A command-2 tunnel to one UDP destination (with Mux enabled, a UDP
        sub-session, as v2ray's client opens one).

        Raises:
            DialError: no server could be reached in time.
        """
        if self._mux is not None and self._mux.running and self._mux_udp:
            return await self._mux.open(
                destination.address, destination.port, Network.UDP
            )
        with trio.move_on_after(CONNECT_TIMEOUT):
            _, endpoint, stream = await self._connect()
            return VMessDatagramChannel.client(
                stream,
                endpoint.user,
                Request(Command.UDP, destination.address, destination.port),
            )
        raise DialError(f"{destination}: connect timed out")

    async def open_udp(
        self, destination: Destination, nursery: trio.Nursery
    ) -> PacketConnection:
        del destination
        await trio.lowlevel.checkpoint()
        return _VMessPackets(self, nursery)


# --- dispatch -----------------------------------------------------------------


def build_outbound(outbound: Outbound) -> OutboundHandler:
    """The handler for one configured outbound."""
    settings = outbound.settings
    if isinstance(settings, FreedomSettings):
        return Freedom(
            outbound.tag, settings, outbound.send_through, outbound.stream.mark
        )
    if isinstance(settings, BlackholeSettings):
        return Blackhole(outbound.tag, settings)
    return VMessOutbound(
        outbound.tag,
        settings,
        outbound.stream,
        outbound.send_through,
        outbound.mux_concurrency,
        outbound.mux_udp,
    )


class _Balancer:
    """Picks one of the outbounds a balancer's selectors name, per tunnel."""

    def __init__(
        self, balancer: Balancer, handlers: Mapping[str, OutboundHandler]
    ) -> None:
        self._candidates = [
            handler
            for tag, handler in handlers.items()
            if tag and tag.startswith(balancer.selectors)
        ]
        self._fallback = handlers.get(balancer.fallback_tag)
        self._round_robin = balancer.strategy == "roundRobin"
        self._turn = 0

    def pick(self) -> OutboundHandler | None:
        if not self._candidates:
            return self._fallback
        if self._round_robin:  # as Xray's: the turn moves before the pick
            self._turn = (self._turn + 1) % len(self._candidates)
            return self._candidates[self._turn]
        return random.choice(self._candidates)


class Dispatcher:
    """Routes each tunnel to an outbound handler (first outbound by default)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._handlers: Mapping[str, OutboundHandler] = {
            outbound.tag: build_outbound(outbound) for outbound in config.outbounds
        }
        self._default = (
            self._handlers[config.outbounds[0].tag] if config.outbounds else None
        )
        for outbound in config.outbounds:
            handler = self._handlers[outbound.tag]
            if outbound.stream.dialer_proxy and isinstance(handler, VMessOutbound):
                handler.dial_through(self._handlers[outbound.stream.dialer_proxy])
        self._balancers = {
            balancer.tag: _Balancer(balancer, self._handlers)
            for balancer in config.routing.balancers
        }
        self._ip_rules = any(rule.ips for rule in config.routing.rules)
        # Finding the local address costs a system call: only when a rule asks.
        self.needs_local = any(
            rule.local_ips or rule.local_ports for rule in config.routing.rules
        )
        self._router = routing.Router(config.routing)

    def run_in(self, nursery: trio.Nursery) -> None:
        """Where outbounds run their own long-lived tasks (Mux, gRPC and
        HTTP/2 connections)."""
        for handler in self._handlers.values():
            if isinstance(handler, VMessOutbound):
                handler.run_in(nursery)

    async def route(
        self, session: Session, destination: Destination
    ) -> OutboundHandler:
        """The outbound a tunnel goes to; a domain is resolved first when the
        routing's domainStrategy asks for it and a rule has IPs to match.

        Raises:
            DialError: there is no outbound at all.
        """
        strategy = self._config.routing.domain_strategy
        resolvable = isinstance(destination.address, str) and self._ip_rules
        resolved: tuple[routing.IPAddress, ...] = ()
        if resolvable and strategy == "IPOnDemand":
            resolved = await _addresses(destination.host)
        rule = self._pick(session, destination, resolved)
        if rule is None and resolvable and strategy == "IPIfNonMatch":
            rule = self._pick(session, destination, await _addresses(destination.host))
        handler = None
        if rule is not None and rule.balancer_tag:
            handler = self._balancers[rule.balancer_tag].pick()
        elif rule is not None:
            handler = self._handlers.get(rule.outbound_tag)
        if handler is not None:
            return handler
        if self._default is None:
            raise DialError("no outbound is configured")
        return self._default

    def _pick(
        self,
        session: Session,
        destination: Destination,
        resolved: tuple[routing.IPAddress, ...],
    ) -> RoutingRule | None:
        return self._router.pick(
            inbound_tag=session.inbound_tag,
            address=destination.address,
            port=destination.port,
            network=destination.network,
            protocol=session.protocol,
            email=session.email,
            source=session.source,
            local=session.local,
            resolved=resolved,
        )

    async def dial_tcp(
        self, destination: Destination, session: Session
    ) -> trio.abc.HalfCloseableStream:
        """A stream to ``destination`` through the routed outbound.

        Raises:
            DialError: the outbound could not connect in time.
        """
        return await self.connect(await self.route(session, destination), destination)

    @staticmethod
    async def connect(
        handler: OutboundHandler, destination: Destination
    ) -> trio.abc.HalfCloseableStream:
        """A stream to ``destination`` through ``handler``, under the timeout.

        Raises:
            DialError: the outbound could not connect in time.
        """
        with trio.move_on_after(CONNECT_TIMEOUT):
            return await handler.dial_tcp(destination)
        raise DialError(f"{destination}: connect timed out")

    async def open_udp(
        self,
        destination: Destination,
        session: Session,
        nursery: trio.Nursery,
        routed: Callable[[OutboundHandler], None] | None = None,
    ) -> PacketConnection:
        """A packet connection for UDP whose first datagram goes to
        ``destination``. On an inbound that sniffs, the flow is routed once
        its first datagrams are sniffed; ``routed`` hears which outbound."""

        async def open_routed(
            dial: Destination, route: Destination, protocol: str
        ) -> PacketConnection:
            if protocol:
                routed_session = dataclasses.replace(session, protocol=protocol)
            else:
                routed_session = session
            handler = await self.route(routed_session, route)
            if routed is not None:
                routed(handler)
            return await handler.open_udp(dial, nursery)

        if session.sniffing is not None and wants_sniffing(
            destination, session.sniffing
        ):
            return SniffedPackets(open_routed, destination, session.sniffing, nursery)
        return await open_routed(destination, destination, "")
