"""One TCP tunnel: dial the routed outbound, relay, write the access line.

Theory of operation: every inbound ends its handshake with a destination and a
session, then calls :func:`run_tunnel`. When the outbound is a VMess client
stream, the first payload is awaited briefly (as v2ray holds its header for up
to 100 ms) so that the request header and the first bytes leave in one write;
a client that waits for the server to speak first still gets its header sent.
An inbound that sniffs answers its client before the dial (the client sends
its first bytes only then), so a failed dial can no longer be reported to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from vtrio.net.mux_client import MuxStream
from vtrio.net.relay import Traffic, relay
from vtrio.net.sniffing import sniffed_destinations
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.transport.tcp import TCPStream, close_forcefully
from vtrio.net.vmess_stream import VMessStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.net.context import ServerContext
    from vtrio.net.outbound import Destination, Session

# How long a VMess client waits for the first payload before sending its header.
FIRST_PAYLOAD_WAIT = 0.1
FIRST_PAYLOAD_SIZE = 16384


async def _send_first_payload(
    client: trio.abc.Stream, vmess: VMessStream | MuxStream
) -> int:
    """Send the header with whatever the client sends within the wait."""
    vmess.seal_header()  # while the client's first bytes are on their way
    # Usually they are already here, and then the wait needs no cancel scope.
    data = (
        client.receive_nowait(FIRST_PAYLOAD_SIZE)
        if isinstance(client, TCPStream | BufferedStream)
        else None
    )
    if data is None:
        with trio.move_on_after(FIRST_PAYLOAD_WAIT):
            data = bytes(await client.receive_some(FIRST_PAYLOAD_SIZE))
    if data is None:  # nothing within the wait: the header goes alone
        await vmess.send_all(b"")
        return 0
    if not data:
        await vmess.send_eof()
        return 0
    await vmess.send_all(data)
    return len(data)


async def run_tunnel(
    context: ServerContext,
    client: trio.abc.Stream,
    destination: Destination,
    session: Session,
    *,
    on_connected: Callable[[], Awaitable[None]] | None = None,
    on_failed: Callable[[Exception], Awaitable[None]] | None = None,
) -> None:
    """Dial ``destination`` for ``session`` and relay ``client`` to it.

    Args:
        context: the running server.
        client: the inbound side, past its handshake.
        destination: where to go.
        session: who asked (routing, policy, log).
        on_connected: called once the outbound is connected (e.g. to send a
            SOCKS success reply).
        on_failed: called with the DialError when the outbound failed, before
            it is raised (e.g. to send a SOCKS error reply).

    Raises:
        DialError: the outbound could not connect.
    """
    dispatcher = context.dispatcher
    route = destination
    if session.sniffing is not None:
        if on_connected is not None:
            await on_connected()
            on_connected = on_failed = None
        if not isinstance(client, BufferedStream):
            client = BufferedStream(client)
        destination, route, session.protocol = await sniffed_destinations(
            client, destination, session.sniffing
        )
    handler = await dispatcher.route(session, route)
    traffic = Traffic()
    try:
        outbound = await dispatcher.connect(handler, destination)
    except Exception as exc:
        context.log_access(session, destination, handler.tag, traffic, "rejected")
        if on_failed is not None:
            await on_failed(exc)
        raise
    status = "closed"
    try:
        if on_connected is not None:
            await on_connected()
        if isinstance(outbound, VMessStream | MuxStream) and not outbound.started:
            traffic.up += await _send_first_payload(client, outbound)
        finished = await relay(client, outbound, context.policy(session.level), traffic)
        status = "closed" if finished else "idle-timeout"
    except trio.Cancelled:
        status = "cancelled"
        raise
    except BaseException:
        status = "broken"
        raise
    finally:
        # Forceful: it never waits, so it needs no shield when cancelled.
        await close_forcefully(outbound)
        context.log_access(session, destination, handler.tag, traffic, status)
