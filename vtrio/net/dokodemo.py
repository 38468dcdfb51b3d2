"""dokodemo-door over UDP: datagrams to a fixed destination, per source.

Theory of operation: one UDP socket per port. Each client address gets its own
packet connection through the routed outbound (so a VMess outbound gives it
its own UDP tunnel), and a reply task sends what comes back to that address.
A source that stays silent for the level-0 ``connIdle`` is forgotten; the
number of sources is bounded, and the oldest is dropped to make room.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio

from vtrio.errors import DialError
from vtrio.net.outbound import Destination, Session, parse_address

if TYPE_CHECKING:
    from vtrio.config.model import DokodemoInboundSettings, Inbound
    from vtrio.net.context import ServerContext
    from vtrio.net.outbound import PacketConnection

LOGGER = logging.getLogger("vtrio.net.dokodemo")

MAX_DATAGRAM = 65535
MAX_SOURCES = 1024

Source = tuple[str, int]


async def serve_dokodemo_udp(
    context: ServerContext,
    inbound: Inbound,
    settings: DokodemoInboundSettings,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay datagrams arriving on ``port`` to the inbound's fixed destination.

    Raises:
        OSError: the port cannot be bound.
        DialError: nothing names this port's destination.
    """
    target = settings.target(port)
    if target is None:
        raise DialError(
            f"dokodemo-door UDP port {port}: neither portMap nor the inbound's"
            " address and port give a destination"
        )
    destination = Destination(parse_address(target[0]), target[1], "udp")
    host = inbound.listen or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    idle = context.policy(0).conn_idle
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind((host, port))
        bound = sock.getsockname()
        task_status.started((str(bound[0]), int(bound[1])))
        sources: dict[Source, tuple[PacketConnection, trio.CancelScope]] = {}
        async with trio.open_nursery() as nursery:
            while True:
                data, sender = await sock.recvfrom(MAX_DATAGRAM)
                source: Source = (str(sender[0]), int(sender[1]))
                entry = sources.get(source)
                if entry is None:
                    if len(sources) >= MAX_SOURCES:
                        _, oldest_scope = sources.pop(next(iter(sources)))
                        oldest_scope.cancel()
                    session = Session(
                        inbound.tag,
                        f"{source[0]}:{source[1]}",
                        level=settings.level,
                    )
                    try:
                        packets = await context.dispatcher.open_udp(
                            destination, session, nursery
                        )
                    except (DialError, OSError) as exc:
                        LOGGER.info("UDP from %s: %s", session.source, exc)
                        continue
                    scope = trio.CancelScope(deadline=trio.current_time() + idle)
                    entry = sources[source] = (packets, scope)
                    nursery.start_soon(
                        _replies, sock, source, packets, scope, idle, sources
                    )
                packets, scope = entry
                scope.deadline = trio.current_time() + idle
                try:
                    await packets.send_to(data, destination.address, destination.port)
                except (DialError, OSError) as exc:
                    LOGGER.debug("UDP to %s failed: %s", destination, exc)


async def _replies(
    sock: trio.socket.SocketType,
    source: Source,
    packets: PacketConnection,
    scope: trio.CancelScope,
    idle: float,
    sources: dict[Source, tuple[PacketConnection, trio.CancelScope]],
) -> None:
    """Send replies back to ``source`` until it has been idle too long."""
    try:
        with scope:
            while True:
                payload, _, _ = await packets.receive_from()
                scope.deadline = trio.current_time() + idle
                await sock.sendto(payload, source)
    finally:
        if sources.get(source, (None,))[0] is packets:
            del sources[source]
        with trio.CancelScope(shield=True):
            await packets.aclose()
