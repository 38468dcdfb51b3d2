"""dokodemo-door over UDP: datagrams to a fixed destination, per source, or
(``followRedirect`` under TPROXY) to where each client sent them.

Theory of operation: one UDP socket per port. Each client address, and with
TPROXY each (client, original destination) pair, gets its own packet
connection through the routed outbound (so a VMess outbound gives it its own
UDP tunnel), and a reply task sends what comes back to the client: from the
port's socket, or under TPROXY from a socket bound transparently to the
address the reply comes from, so the client sees its peer answer. A pair that
stays silent for the level-0 ``connIdle`` is forgotten; the number of pairs
is bounded, and the oldest is dropped to make room.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio

from vtrio.errors import DialError
from vtrio.net.outbound import Destination, Session
from vtrio.net.transport.tcp import address_name
from vtrio.net.transport.transparent import (
    receive_diverted,
    receive_original_destinations,
    set_transparent,
    spoofing_socket,
)
from vtrio.protocol.address import parse_address

if TYPE_CHECKING:
    from vtrio.config.model import DokodemoInboundSettings, Inbound
    from vtrio.net.context import ServerContext
    from vtrio.net.outbound import PacketConnection

LOGGER = logging.getLogger("vtrio.net.dokodemo")

MAX_DATAGRAM = 65535
MAX_SOURCES = 1024

Source = tuple[str, int]
# A client and the destination its datagrams go to.
Flow = tuple[Source, Source]


async def serve_dokodemo_udp(
    context: ServerContext,
    inbound: Inbound,
    settings: DokodemoInboundSettings,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay datagrams arriving on ``port`` to the inbound's destination.

    Raises:
        OSError: the port cannot be bound (a transparent one needs
            CAP_NET_ADMIN).
        DialError: nothing names this port's destination.
    """
    transparent = settings.follow_redirect  # the config ensures TPROXY
    fixed = settings.target(port)
    if fixed is None and not transparent:
        raise DialError(
            f"dokodemo-door UDP port {port}: neither portMap nor the inbound's"
            " address and port give a destination"
        )
    host = inbound.listen or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        if transparent:
            set_transparent(sock, family)
            receive_original_destinations(sock, family)
        await sock.bind((host, port))
        bound = sock.getsockname()
        task_status.started((str(bound[0]), int(bound[1])))
        async with trio.open_nursery() as nursery:
            door = _Door(context, inbound, settings, sock, family, nursery)
            while True:
                if transparent:
                    data, source, original = await receive_diverted(sock, MAX_DATAGRAM)
                    target = original or fixed
                else:
                    data, sender = await sock.recvfrom(MAX_DATAGRAM)
                    source, target = (str(sender[0]), int(sender[1])), fixed
                if target is None:
                    LOGGER.debug("UDP from %s: not diverted; dropped", source)
                    continue
                await door.forward(data, (source, target))


class _Door:
    """The flows of one UDP port and how their replies go back."""

    def __init__(
        self,
        context: ServerContext,
        inbound: Inbound,
        settings: DokodemoInboundSettings,
        sock: trio.socket.SocketType,
        family: int,
        nursery: trio.Nursery,
    ) -> None:
        self._context = context
        self._inbound = inbound
        self._settings = settings
        self._sock = sock
        self._family = family
        self._nursery = nursery
        self._idle = context.policy(0).conn_idle
        self._flows: dict[Flow, tuple[PacketConnection, trio.CancelScope]] = {}

    async def forward(self, data: bytes, flow: Flow) -> None:
        """Send a client's datagram on, opening its flow if it is new."""
        entry = self._flows.get(flow) or await self._open(flow)
        if entry is None:
            return
        packets, scope = entry
        scope.deadline = trio.current_time() + self._idle
        target = flow[1]
        try:
            await packets.send_to(data, parse_address(target[0]), target[1])
        except (DialError, OSError) as exc:
            LOGGER.debug("UDP to %s failed: %s", address_name(target), exc)

    async def _open(
        self, flow: Flow
    ) -> tuple[PacketConnection, trio.CancelScope] | None:
        source, target = flow
        if len(self._flows) >= MAX_SOURCES:
            _, oldest_scope = self._flows.pop(next(iter(self._flows)))
            oldest_scope.cancel()
        session = Session(
            self._inbound.tag,
            address_name(source),
            level=self._settings.level,
            sniffing=self._inbound.sniffing,
        )
        destination = Destination(parse_address(target[0]), target[1], "udp")
        try:
            packets = await self._context.dispatcher.open_udp(
                destination, session, self._nursery
            )
        except (DialError, OSError) as exc:
            LOGGER.info("UDP from %s: %s", session.source, exc)
            return None
        scope = trio.CancelScope(deadline=trio.current_time() + self._idle)
        self._flows[flow] = (packets, scope)
        self._nursery.start_soon(self._replies, flow, packets, scope)
        return packets, scope

    async def _replies(
        self, flow: Flow, packets: PacketConnection, scope: trio.CancelScope
    ) -> None:
        """Send replies back to the flow's client until it has been idle too
        long: from the port's socket, or (TPROXY) from each reply's source."""
        source = flow[0]
        answering: dict[Source, trio.socket.SocketType] = {}
        try:
            with scope:
                async with trio.open_nursery() as readers:
                    while True:
                        payload, address, port = await packets.receive_from()
                        scope.deadline = trio.current_time() + self._idle
                        if not self._settings.follow_redirect:
                            await self._sock.sendto(payload, source)
                            continue
                        sender = (str(address), port)
                        if sender not in answering:
                            answering[sender] = self._answering(sender, source)
                            readers.start_soon(
                                self._read_back, answering[sender], (source, sender)
                            )
                        await answering[sender].send(payload)
        except OSError as exc:  # a reply address that cannot be taken
            LOGGER.info("UDP replies to %s: %s", address_name(source), exc)
        finally:
            for sock in answering.values():
                sock.close()
            if self._flows.get(flow, (None,))[0] is packets:
                del self._flows[flow]
            with trio.CancelScope(shield=True):
                await packets.aclose()

    def _answering(self, sender: Source, client: Source) -> trio.socket.SocketType:
        """The socket a TPROXY flow's replies from ``sender`` leave from."""
        return trio.socket.from_stdlib_socket(
            spoofing_socket(sender, self._family, client)
        )

    async def _read_back(self, sock: trio.socket.SocketType, flow: Flow) -> None:
        """The client's next datagrams to an address we answered from: TPROXY
        hands them to that socket (it matches them exactly), not the port's."""
        while True:
            data = await sock.recv(MAX_DATAGRAM)
            await self.forward(data, flow)
