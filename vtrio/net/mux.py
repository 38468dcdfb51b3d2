"""Serve a Mux.Cool / XUDP session on a server-side VMess stream (spec section 7).

Theory of operation: after a ``Cmd = 3`` request the VMess body is a stream of
Mux frames. :func:`serve_mux` owns one nursery: its own task reads frames and
routes them, and every sub-session opened by a New frame runs as a child task
that dials through the runtime's dispatch API (:class:`MuxDispatch`). Frames a
sub-session receives travel to it through a small bounded channel, so a slow
destination holds up the reader (and so the client) instead of growing memory,
as v2ray's pipes do. Every frame written back goes through one lock, because
frames of different sub-sessions must not interleave on the stream.

Closing follows v2ray, whose Mux has no half-close: an End from the client
flushes what it sent, half-closes the destination and then drops the
sub-session, and nothing more is sent for it. A sub-session that ends on our
side (the destination closed, failed, or went idle) sends one End, with the
Error option when it failed. A Keep with data for an unknown session is
answered with End; KeepAlive is ignored.

UDP sub-sessions carry one datagram per frame. A plain Mux UDP sub-session
sends everything to the destination of its New frame. XUDP (sing-box
``packet_encoding: "xudp"``, Xray) names a destination on each Keep frame and
expects the source of each reply in the frames we send back; a sub-session is
treated as XUDP once it is session 0, has a GlobalID, or receives an
addressed Keep frame.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import TYPE_CHECKING, Protocol

import trio

from vtrio.errors import DialError, RemoteProtocolError, VtrioError
from vtrio.net.sniffing import sniff_bytes
from vtrio.net.transport.shared import write_shared
from vtrio.protocol.body import MAX_CHUNK_PAYLOAD
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
    from vtrio.protocol.address import Address
    from vtrio.protocol.sniff import Sniffed

LOGGER = logging.getLogger("vtrio.net.mux")

RECEIVE_SIZE = 16384
# A Keep frame's own bytes: MetaLen, SessionID, Status, Option, DataLen.
KEEP_FRAME_OVERHEAD = 2 + 4 + 2
# Read destinations in pieces whose Keep frame fits in one VMess chunk, so a
# frame never spills a few bytes into a second chunk.
DOWNLINK_READ = min(MAX_STREAM_FRAME_DATA, MAX_CHUNK_PAYLOAD - KEEP_FRAME_OVERHEAD)
DEFAULT_MAX_SESSIONS = 128
# Frames waiting for one sub-session; each carries at most 64 KiB.
SESSION_INBOX = 4
XUDP_SESSION_ID = 0


class PacketConnection(Protocol):
    """A UDP socket of the outbound side, with a destination per datagram."""

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        """Send one datagram to ``address:port`` (a domain is resolved)."""

    async def receive_from(self) -> tuple[bytes, Address, int]:
        """The next datagram and the address and port it came from."""

    async def aclose(self) -> None:
        """Release the socket."""


class MuxDispatch(Protocol):
    """How sub-sessions reach their destinations (the runtime's outbounds).

    The runtime binds routing context (inbound tag, user) into the object it
    passes to :func:`serve_mux`; both methods raise :class:`DialError` or
    ``OSError`` when the destination cannot be reached, and run under whatever
    connect timeout the runtime applies.
    """

    # The inbound sniffs: a TCP sub-session's first bytes are read before
    # it is dialled, and what they are is passed on.
    sniffs: bool

    async def dial_tcp(
        self, address: Address, port: int, sniffed: Sniffed | None = None
    ) -> trio.abc.HalfCloseableStream:
        """A stream to ``address:port`` (or to what ``sniffed`` names)."""

    async def open_udp(self, address: Address, port: int) -> PacketConnection:
        """A packet connection for a UDP sub-session to ``address:port`` first."""


async def serve_mux(
    stream: trio.abc.Stream,
    dispatch: MuxDispatch,
    *,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    session_idle: float = math.inf,
) -> None:
    """Run the Mux.Cool session carried by ``stream`` until the client ends it.

    Args:
        stream: the server side of a VMess connection with ``Cmd = 3``, after
            its request header; the response header goes out with our first
            frame.
        dispatch: opens each sub-session's TCP stream or UDP socket.
        max_sessions: New frames beyond this many open sub-sessions are
            refused with an End carrying the Error option.
        session_idle: seconds without traffic after which a sub-session is
            closed (the user level's ``connIdle``).

    Returns:
        When the client closes the stream; open sub-sessions are cancelled,
        since a v2ray client only does that when it has none left.

    Raises:
        RemoteProtocolError: the client sent an invalid frame or a New for a
            session id already in use.
        trio.BrokenResourceError: the VMess stream broke.
    """
    server = _MuxServer(stream, dispatch, max_sessions, session_idle)
    async with trio.open_nursery() as nursery:
        await server.read_frames(nursery)
        nursery.cancel_scope.cancel()


class _Session:
    """Book-keeping of one sub-session, shared by the reader and its task."""

    def __init__(self, new: Frame, idle: float) -> None:
        self.id = new.session_id
        self.network = new.network
        self.xudp = new.session_id == XUDP_SESSION_ID or new.global_id is not None
        self.inbox_send, self.inbox = trio.open_memory_channel[Frame](SESSION_INBOX)
        self.scope = trio.CancelScope(deadline=trio.current_time() + idle)
        self.idle = idle

    def touch(self) -> None:
        """Traffic moved: push the idle deadline forward."""
        self.scope.deadline = trio.current_time() + self.idle


class _MuxServer:
    """The state of one serve_mux call: the open sub-sessions and the writer."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatch: MuxDispatch,
        max_sessions: int,
        idle: float,
    ) -> None:
        self._stream = stream
        self._dispatch = dispatch
        self._max_sessions = max_sessions
        self._idle = idle
        self._sessions: dict[int, _Session] = {}
        self._send_lock = trio.Lock()

    async def _send(self, *frames: bytes) -> None:
        """Write whole frames; the lock keeps sub-sessions from interleaving."""
        async with self._send_lock:
            await write_shared(self._stream, b"".join(frames))

    async def _send_end(self, session_id: int, *, error: bool) -> None:
        await self._send(encode_frame(Frame(session_id, Status.END, error=error)))

    async def read_frames(self, nursery: trio.Nursery) -> None:
        decoder = MuxDecoder()
        while True:
            frame = decoder.next_frame()
            if frame is NEED_DATA:
                decoder.receive_data(await self._stream.receive_some(RECEIVE_SIZE))
                continue
            if frame is None:
                return
            if frame.status is Status.NEW:
                await self._open(nursery, frame)
            elif frame.status is Status.KEEP:
                await self._deliver(frame)
            elif frame.status is Status.END:
                self._close_by_client(frame)
            # KeepAlive needs nothing; its data (if any) is already dropped.

    async def _open(self, nursery: trio.Nursery, frame: Frame) -> None:
        if frame.session_id in self._sessions:
            raise RemoteProtocolError(f"mux session {frame.session_id} opened twice")
        if len(self._sessions) >= self._max_sessions:
            LOGGER.info("mux: refusing session %d, too many open", frame.session_id)
            await self._send_end(frame.session_id, error=True)
            return
        session = _Session(frame, self._idle)
        self._sessions[session.id] = session
        assert frame.network is not None  # decode_meta sets it on New frames
        LOGGER.debug(
            "mux: session %d opened, %s to %s:%d",
            session.id,
            frame.network.name,
            frame.address,
            frame.port,
        )
        if frame.data:
            # The first payload goes to the New frame's own destination.
            session.inbox_send.send_nowait(
                Frame(frame.session_id, Status.KEEP, frame.data)
            )
        nursery.start_soon(self._run_session, session, frame)

    async def _deliver(self, frame: Frame) -> None:
        session = self._sessions.get(frame.session_id)
        if session is None:
            if frame.data is not None:
                await self._send_end(frame.session_id, error=False)
            return
        if frame.data is None:
            return
        # The sub-session may finish while we wait; the client then learns it
        # from the End that sub-session sends.
        with contextlib.suppress(trio.BrokenResourceError):
            await session.inbox_send.send(frame)

    def _close_by_client(self, frame: Frame) -> None:
        session = self._sessions.pop(frame.session_id, None)
        if session is None:
            return
        # Out of the table, so the session will not answer with an End.
        if frame.error:
            session.scope.cancel()
        else:
            # The session's pump flushes what is queued, then half-closes.
            session.inbox_send.close()

    async def _run_session(self, session: _Session, new: Frame) -> None:
        failed = False
        with session.scope:
            try:
                if session.network is Network.UDP:
                    await self._relay_udp(session, new)
                else:
                    await self._relay_tcp(session, new)
            except* (VtrioError, OSError, trio.BrokenResourceError) as group:
                LOGGER.info(
                    "mux: session %d to %s:%d failed: %s",
                    session.id,
                    new.address,
                    new.port,
                    group.exceptions[0],
                )
                failed = True
        # From here on frames for this session are refused by its channel.
        session.inbox.close()
        if self._sessions.get(session.id) is session:
            # We ended it (not the client): say so, outside the possibly
            # expired session scope.
            del self._sessions[session.id]
            await self._send_end(session.id, error=failed)

    async def _relay_tcp(self, session: _Session, new: Frame) -> None:
        assert new.address is not None
        first = bytearray()
        found = None
        if self._dispatch.sniffs:
            found = await sniff_bytes(first, functools.partial(_next_data, session))
        try:
            upstream = await self._dispatch.dial_tcp(new.address, new.port, found)
        except OSError as exc:
            raise DialError(str(exc)) from exc
        async with upstream, trio.open_nursery() as nursery:
            if first:  # what sniffing read goes first
                await upstream.send_all(first)

            async def uplink() -> None:
                async for frame in session.inbox:
                    await upstream.send_all(frame.data or b"")
                    session.touch()
                # The client sent End: no half-close in Mux (module docstring).
                await upstream.send_eof()
                nursery.cancel_scope.cancel()

            nursery.start_soon(uplink)
            while data := await upstream.receive_some(DOWNLINK_READ):
                session.touch()
                await self._send(*stream_frames(session.id, data))
            nursery.cancel_scope.cancel()

    async def _relay_udp(self, session: _Session, new: Frame) -> None:
        assert new.address is not None
        packets = await self._dispatch.open_udp(new.address, new.port)
        try:
            async with trio.open_nursery() as nursery:

                async def uplink() -> None:
                    async for frame in session.inbox:
                        address, port = new.address, new.port
                        if frame.address is not None:
                            session.xudp = True
                            address, port = frame.address, frame.port
                        assert address is not None
                        await packets.send_to(frame.data or b"", address, port)
                        session.touch()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(uplink)
                while True:
                    payload, source, source_port = await packets.receive_from()
                    session.touch()
                    await self._send(
                        encode_frame(_reply(session, payload, source, source_port))
                    )
        finally:
            with trio.CancelScope(shield=True):
                await packets.aclose()


async def _next_data(session: _Session) -> bytes:
    """The next payload the client sent this sub-session (b"" once it ended)."""
    while True:
        try:
            frame = await session.inbox.receive()
        except trio.EndOfChannel:
            return b""
        if frame.data:
            session.touch()
            return frame.data


def _reply(session: _Session, payload: bytes, source: Address, port: int) -> Frame:
    """A datagram for the client; XUDP names its source (spec 7)."""
    if session.xudp:
        return Frame(session.id, Status.KEEP, payload, False, Network.UDP, source, port)
    return Frame(session.id, Status.KEEP, payload)
