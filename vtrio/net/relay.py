"""Copy bytes both ways between two streams, with half-close and idle timeouts.

Theory of operation: two pumps run in one nursery (bytes the client sent
with its handshake are forwarded first). When one side's input ends,
its pump sends EOF to the other side (``send_eof``, or ``aclose`` for streams
that cannot half-close) and the other direction keeps flowing. The nursery's
cancel scope is the idle timer of both pumps: every move of bytes pushes its
deadline forward by the policy's ``connIdle``, and once a direction has finished the
window shrinks to ``downlinkOnly`` / ``uplinkOnly`` (spec section 10), so a
tunnel whose peer went quiet cannot linger.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.vmess_stream import VMessStream

if TYPE_CHECKING:
    from vtrio.config.model import LevelPolicy

# The most bytes a pump asks for at once; the policy's buffer can only lower it.
MAX_RECEIVE = 262144


@dataclass(slots=True)
class Traffic:
    """Bytes moved by a relay: up is client -> destination."""

    up: int = 0
    down: int = 0


def _handshake_leftover(stream: trio.abc.Stream, max_bytes: int) -> bytes | None:
    """Bytes that came in with the client's handshake and wait in user space
    (a VMess server's first payload, a SOCKS client's pipelined data); no
    system call is made to find out."""
    if isinstance(stream, VMessStream) or (
        isinstance(stream, BufferedStream) and stream.buffered
    ):
        return stream.receive_nowait(max_bytes)
    return None


async def send_eof_or_close(stream: trio.abc.Stream) -> None:
    """Half-close when the stream can, else close it."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
    else:
        await stream.aclose()


class _IdleTimer:
    """One deadline shared by both pumps, pushed forward as bytes move.

    Moving a deadline costs more than copying a chunk, so it is only moved
    when a tenth of the idle window has passed since the last move; the
    timeout fires at most that much late.
    """

    def __init__(self, scope: trio.CancelScope, idle: float) -> None:
        self.scope = scope
        self.idle = idle
        self._moved = -math.inf
        self.touch()

    def touch(self) -> None:
        now = trio.current_time()
        if now - self._moved < self.idle / 10:
            return
        self._moved = now
        self.scope.deadline = now + self.idle if math.isfinite(self.idle) else math.inf

    def shrink(self, idle: float) -> None:
        self.idle = min(self.idle, idle)
        self._moved = -math.inf
        self.touch()


async def relay(
    client: trio.abc.Stream,
    destination: trio.abc.Stream,
    policy: LevelPolicy,
    traffic: Traffic | None = None,
) -> bool:
    """Relay until both directions finished or the tunnel went idle.

    Args:
        client: the inbound side (its input is the uplink).
        destination: the outbound side.
        policy: connIdle, uplinkOnly, downlinkOnly and bufferSize.
        traffic: counters to update as bytes move.

    Returns:
        True if both directions ended normally, False on an idle timeout.

    Raises:
        trio.BrokenResourceError: either side broke (reset, protocol error).
    """
    counters = traffic if traffic is not None else Traffic()
    receive_size = max(1024, min(MAX_RECEIVE, policy.buffer_size or MAX_RECEIVE))
    directions_open = 2

    async def pump(
        source: trio.abc.Stream,
        sink: trio.abc.Stream,
        upward: bool,
    ) -> None:
        while True:
            data = await source.receive_some(receive_size)
            if not data:
                break
            await sink.send_all(data)
            if upward:
                counters.up += len(data)
            else:
                counters.down += len(data)
            timer.touch()
        await send_eof_or_close(sink)
        nonlocal directions_open
        directions_open -= 1
        if directions_open:
            # Uplink done: the downlink gets downlinkOnly; and the reverse.
            # (After the second direction the relay ends: no deadline.)
            timer.shrink(policy.downlink_only if upward else policy.uplink_only)

    # The nursery's own scope is the idle timer (a cancel scope costs as much
    # as a chunk); the downlink runs in this task, one task fewer per tunnel.
    async with trio.open_nursery() as nursery:
        timer = _IdleTimer(nursery.cancel_scope, policy.conn_idle)
        # A first payload that came with the handshake (a VMess server's
        # request) goes on before the pumps start, not after their first turn.
        if early := _handshake_leftover(client, receive_size):
            await destination.send_all(early)
            counters.up += len(early)
        nursery.start_soon(pump, client, destination, True)
        await pump(destination, client, False)
    return not nursery.cancel_scope.cancelled_caught
