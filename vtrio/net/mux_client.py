"""Client-side Mux.Cool: several TCP tunnels in one VMess connection (spec 7).

Theory of operation: a VMess outbound with ``mux.enabled`` keeps a
:class:`MuxPool`. A new tunnel joins the newest connection that carries
fewer than ``concurrency`` sub-sessions, or opens another (``Cmd = 3``; the
server answers each sub-session's New frame like a fresh tunnel). Each
connection is a task in the server's connection nursery: it reads the
server's frames and hands each sub-session its data through a small bounded
channel, so one slow reader holds up its connection (as in v2ray) rather
than growing memory. Frames from different sub-sessions are written under
one lock. A connection with no sub-session left closes after ``MUX_IDLE``
seconds; when it breaks, every sub-session on it breaks too.

Mux.Cool has no half-close (``serve_mux``'s docstring): a sub-session that
sends End is dropped by the server, so :meth:`MuxStream.send_eof` ends the
sub-session both ways, after what has already arrived is read. UDP does not
go over Mux as v2ray's own client sends it: a sub-session per destination
(network UDP), a datagram per frame; not as Xray's XUDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from vtrio.errors import VtrioError
from vtrio.net.transport.shared import write_shared
from vtrio.protocol.events import NEED_DATA
from vtrio.protocol.mux import (
    MAX_STREAM_FRAME_DATA,
    Frame,
    MuxDecoder,
    Network,
    Status,
    encode_frame,
    stream_frames,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.protocol.address import Address

LOGGER = logging.getLogger("vtrio.net.mux_client")

# v2ray closes a client connection left without sub-sessions after 16 s.
MUX_IDLE = 16.0
RECEIVE_SIZE = 16384
# Frames waiting for one sub-session's reader.
SESSION_INBOX = 4
# How long a closing sub-session may wait to send its End.
END_GRACE = 1.0
# Session ids run 1..65535 (0 is XUDP's); a connection that used them all
# takes no new ones.
LAST_SESSION_ID = 0xFFFF


class MuxStream(trio.abc.HalfCloseableStream):
    """One sub-session of a Mux connection: a Trio stream for TCP; for UDP
    each ``send_all`` is one datagram and ``receive_datagram`` reads them."""

    def __init__(
        self,
        connection: _MuxConnection,
        session_id: int,
        address: Address,
        port: int,
        network: Network = Network.TCP,
    ) -> None:
        self._connection = connection
        self.session_id = session_id
        self._address = address
        self._port = port
        self.network = network
        self._opened = False  # the New frame went out
        self._ended = False  # we sent End (or the connection is gone)
        self._send, self._inbox = trio.open_memory_channel[bytes](SESSION_INBOX)
        self._pending = b""
        self._broken: str | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._ended:
            raise trio.ClosedResourceError("the mux sub-session has ended")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        payload = bytes(data)
        datagram = self.network is Network.UDP
        frames = []
        if not self._opened:
            self._opened = True
            # A datagram is never split: it goes whole in the New frame.
            first_size = len(payload) if datagram else MAX_STREAM_FRAME_DATA
            first, payload = payload[:first_size], payload[first_size:]
            frames.append(
                encode_frame(
                    Frame(
                        self.session_id,
                        Status.NEW,
                        first or None,
                        network=self.network,
                        address=self._address,
                        port=self._port,
                    )
                )
            )
        if datagram and payload:
            frames.append(encode_frame(Frame(self.session_id, Status.KEEP, payload)))
        elif not datagram:
            frames += stream_frames(self.session_id, payload)
        if frames:
            await self._connection.send(*frames)
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """End the sub-session (the server drops it: no half-close in Mux)."""
        await self._end(error=False)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            data = await self.receive_datagram()
            if data is None:
                return b""
            self._pending = data
        else:
            await trio.lowlevel.checkpoint()
        limit = len(self._pending) if max_bytes is None else max_bytes
        out, self._pending = self._pending[:limit], self._pending[limit:]
        return out

    async def receive_datagram(self) -> bytes | None:
        """The data of the server's next frame (for UDP, one datagram);
        None once the sub-session ended."""
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken) from None
            return None
        except trio.ClosedResourceError:  # aclose while reading
            raise trio.ClosedResourceError("the mux sub-session is closed") from None

    async def send(self, payload: bytes) -> None:
        """Send one datagram (a UDP sub-session)."""
        await self.send_all(payload)

    async def receive(self) -> bytes | None:
        """The next datagram (a UDP sub-session), None at its end."""
        return await self.receive_datagram()

    async def aclose(self) -> None:
        await self._end(error=False)
        self._inbox.close()

    @property
    def started(self) -> bool:
        """Whether the New frame went out."""
        return self._opened

    def seal_header(self) -> None:
        """Nothing to prepare: the New frame is made when it is sent (the
        tunnel calls this on a stream whose first write waits for data)."""

    async def _end(self, *, error: bool) -> None:
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        self._ended = True
        self._send.close()  # what arrived is still read; nothing more comes
        self._connection.forget(self.session_id)
        if not self._opened or self._broken is not None:
            await trio.lowlevel.checkpoint()
            return
        # Even when the tunnel is being cancelled the server should hear of
        # it, or the sub-session lingers there until its idle timeout.
        with trio.move_on_after(END_GRACE, shield=True):
            await self._connection.send_end(self.session_id, error=error)

    async def deliver(self, data: bytes) -> None:
        """Queue data from the server; wait only when the reader is behind
        (the common case queues it without a trip through the scheduler)."""
        # Ended on our side: dropped.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            try:
                self._send.send_nowait(data)
            except trio.WouldBlock:
                await self._send.send(data)

    def finish(self, broken: str | None) -> None:
        """The server ended the sub-session (or the connection is gone)."""
        if broken is not None:
            self._broken = self._broken or broken
            self._ended = True
        self._send.close()


class _MuxConnection:
    """One VMess connection carrying sub-sessions."""

    def __init__(self, stream: trio.abc.Stream, concurrency: int) -> None:
        self._stream = stream
        self._concurrency = concurrency
        self._sessions: dict[int, MuxStream] = {}
        self._next_id = 1
        self._lock = trio.Lock()
        self._idle = trio.CancelScope()
        # The VMess response can only be read once the request went out.
        self._request_sent = trio.Event()
        self.closed = False

    def full(self) -> bool:
        return (
            self.closed
            or len(self._sessions) >= self._concurrency
            or self._next_id > LAST_SESSION_ID
        )

    def open(self, address: Address, port: int, network: Network) -> MuxStream:
        session_id, self._next_id = self._next_id, self._next_id + 1
        stream = MuxStream(self, session_id, address, port, network)
        self._sessions[session_id] = stream
        self._idle.deadline = math.inf
        return stream

    def forget(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)
        if not self._sessions:
            self._idle.deadline = trio.current_time() + MUX_IDLE

    async def send(self, *frames: bytes) -> None:
        try:
            async with self._lock:
                await write_shared(self._stream, b"".join(frames))
            self._request_sent.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._break(f"mux connection broke: {exc}")
            raise trio.BrokenResourceError(f"mux connection broke: {exc}") from exc

    async def send_end(self, session_id: int, *, error: bool) -> None:
        # A broken connection needs no End: the server dropped it all.
        with contextlib.suppress(trio.BrokenResourceError):
            await self.send(encode_frame(Frame(session_id, Status.END, error=error)))

    async def run(self) -> None:
        """Read frames until the server closes, the connection breaks, or it
        has been idle too long."""
        reason = "the mux connection was closed"
        try:
            with self._idle:
                await self._request_sent.wait()
                await self._read_frames()
        except* (
            VtrioError,
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as group:
            reason = f"mux connection broke: {group.exceptions[0]}"
        finally:
            self._break(reason)
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _read_frames(self) -> None:
        decoder = MuxDecoder()
        while True:
            frame = decoder.next_frame()
            if frame is NEED_DATA:
                decoder.receive_data(await self._stream.receive_some(RECEIVE_SIZE))
                continue
            if frame is None:
                return
            session = self._sessions.get(frame.session_id)
            if session is None:
                continue  # ended on our side, or never ours
            if frame.status is Status.KEEP and frame.data:
                await session.deliver(frame.data)
            elif frame.status is Status.END:
                self.forget(frame.session_id)
                session.finish(
                    "the server ended it with an error" if frame.error else None
                )

    def _break(self, reason: str) -> None:
        self.closed = True
        for session in self._sessions.values():
            session.finish(reason)
        self._sessions.clear()


class MuxPool:
    """The Mux connections of one VMess outbound.

    Args:
        dial: opens a VMess connection with ``Cmd = 3`` (the outbound's own
            server choice and timeouts).
        concurrency: sub-sessions per connection at most.
    """

    def __init__(
        self, dial: Callable[[], Awaitable[trio.abc.Stream]], concurrency: int
    ) -> None:
        self._dial = dial
        self._concurrency = concurrency
        self._connections: list[_MuxConnection] = []
        self._nursery: trio.Nursery | None = None
        self._opening = trio.Lock()

    def run_in(self, nursery: trio.Nursery) -> None:
        """Where the connections' reader tasks run (the server's)."""
        self._nursery = nursery

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def open(
        self, address: Address, port: int, network: Network = Network.TCP
    ) -> MuxStream:
        """A sub-session to ``address:port`` on a connection with room.

        Raises:
            DialError: a new connection was needed and could not be made
                (from ``dial``).
        """
        assert self._nursery is not None, "run_in() first"
        # One opening at a time, so simultaneous tunnels share the new one.
        async with self._opening:
            self._connections = [c for c in self._connections if not c.closed]
            for connection in reversed(self._connections):
                if not connection.full():
                    return connection.open(address, port, network)
            stream = await self._dial()
            connection = _MuxConnection(stream, self._concurrency)
            self._connections.append(connection)
            self._nursery.start_soon(connection.run)
            LOGGER.debug("mux: %d connection(s) open", len(self._connections))
            return connection.open(address, port, network)
