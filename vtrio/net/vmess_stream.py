"""VMessStream: a Trio stream that speaks VMess over any transport stream.

Theory of operation: the sans-IO connection (``vtrio.protocol.connection``)
does all the parsing and sealing; this class only moves bytes between it and
the transport, the way ``trio.SSLStream`` wraps its ``transport_stream``.
Because it is itself a ``HalfCloseableStream`` it stacks on TCP, TLS or
WebSocket, and on another VMessStream.

The client side sends nothing until the first ``send_all`` (or ``send_eof``),
so the request header leaves together with the first payload in one write
(sing-box servers want the whole header in their first read, spec 3.3). The
server side writes its response header together with the first response data
(spec 5.4). ``send_eof`` writes VMess's end-of-stream chunk; the transport
itself stays open until ``aclose`` because peers do not expect a TCP half-close.

UDP (command 2) uses :class:`VMessDatagramChannel` on the same connection
objects: one datagram per chunk in both directions.
"""

from __future__ import annotations

import contextlib
import operator
import os
import platform
from typing import TYPE_CHECKING, Self

import trio

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.net.clock import unix_now
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import (
    NEED_DATA,
    Data,
    Datagram,
    EndOfStream,
    Event,
    NeedData,
    Rejected,
    RequestHeader,
    ResponseHeader,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.config.model import VMessUser
    from vtrio.protocol.commands import SwitchAccount
    from vtrio.protocol.instruction import Request

RECEIVE_SIZE = 262144
Buffer = bytes | bytearray | memoryview
MACHINE = platform.machine()


class _ConflictGuard:
    """Raises BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._what = what

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class _VMessBase:
    """Shared driver: feed the transport into the connection, pull events."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        connection: ClientConnection | ServerConnection,
    ) -> None:
        self.transport_stream = transport
        self._conn = connection
        self._closed = False
        self._broken = False
        self._send_guard = _ConflictGuard("sending")
        self._receive_guard = _ConflictGuard("receiving")
        self._started = False  # client: header sent; server: response sent
        # The start of what the peer sent, for a rejection's log line.
        self.first_bytes = b""
        # Server side: a command (SwitchAccount) for the response header.
        self.response_command: SwitchAccount | None = None

    @classmethod
    def client(
        cls,
        transport: trio.abc.Stream,
        account: VMessUser,
        request: Request,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> Self:
        """A client tunnel; the request header leaves with the first send.

        Args:
            transport: a connected stream to the VMess server.
            account: the outbound user (id, alterId, security, experiments).
            request: command and destination.
            random: source of keys, nonces and padding.
        """
        connection = ClientConnection(
            account, request, now=unix_now(), random=random, machine=MACHINE
        )
        return cls(transport, connection)

    def _encode(
        self, payload: Buffer, encode: Callable[[Buffer], bytes | bytearray]
    ) -> bytes | bytearray:
        """The bytes to write for ``payload``; the first write carries the header."""
        conn = self._conn
        if self._started:
            return encode(payload) if payload else b""
        self._started = True
        if isinstance(conn, ClientConnection):
            return conn.start(payload)
        header = conn.send_response(self.response_command)
        return header + encode(payload) if payload else header

    async def _send(
        self, payload: Buffer, encode: Callable[[Buffer], bytes | bytearray]
    ) -> None:
        out = self._encode(payload, encode)
        if out:
            await self._write(out)
        else:
            await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the VMess stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("the VMess stream is broken")

    def _event_now(self) -> Event | NeedData:
        """The connection's next event from what was received so far."""
        try:
            return self._conn.next_event()
        except RemoteProtocolError as exc:
            self._broken = True
            raise trio.BrokenResourceError(f"VMess: {exc}") from exc

    async def _fill(self) -> None:
        """Wait for the transport's next bytes and hand them to the connection."""
        # The wait is the time to key the response (a no-op after).
        self._conn.prepare_response()
        data = await self.transport_stream.receive_some(RECEIVE_SIZE)
        if not self.first_bytes:
            self.first_bytes = bytes(data[:16])
        self._conn.receive_data(data)

    async def _next_event(self) -> Event:
        """The next protocol event, reading the transport as needed."""
        while (event := self._event_now()) is NEED_DATA:
            await self._fill()
        return event

    async def _write(self, data: bytes | bytearray) -> None:
        try:
            await self.transport_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            raise

    async def aclose(self) -> None:
        """Close the transport; a closed stream stays closed."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        await self.transport_stream.aclose()


class VMessStream(_VMessBase, trio.abc.HalfCloseableStream):
    """A VMess TCP (or Mux) tunnel as a half-closeable Trio stream.

    Build it with :meth:`client` or :meth:`accept`.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        connection: ClientConnection | ServerConnection,
    ) -> None:
        super().__init__(transport, connection)
        self._pending = b""  # received data beyond max_bytes
        self._eof_received = False
        self._eof_sent = False
        self.on_response: Callable[[SwitchAccount | None], None] | None = None

    @property
    def started(self) -> bool:
        """Whether the header (client) or response header (server) went out."""
        return self._started

    def seal_header(self) -> None:
        """Client side: seal the request header ahead of the first send, so
        the time waiting for the first payload is not wasted (no effect on a
        server stream or once the header went out)."""
        if isinstance(self._conn, ClientConnection) and not self._started:
            self._conn.seal_header()

    @classmethod
    async def accept(
        cls,
        transport: trio.abc.Stream,
        connection: ServerConnection,
    ) -> tuple[VMessStream, RequestHeader | Rejected]:
        """Read a client's request header.

        Args:
            transport: the accepted stream.
            connection: a fresh server connection for this inbound.

        Returns:
            The tunnel and its request, or ``Rejected`` (drain, then close;
            ``first_bytes`` tells what the peer sent, for the log line).

        Raises:
            trio.BrokenResourceError: the peer sent invalid bytes or went away
                before the header was complete.
        """
        stream = cls(transport, connection)
        event = await stream._next_event()
        if isinstance(event, Rejected | RequestHeader):
            return stream, event
        raise LocalProtocolError(f"unexpected {type(event).__name__} before a header")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof was already called")
            await self._send(data, self._conn.send_data)

    async def flush_header(self) -> None:
        """Send the response header if nothing was sent yet (spec 5.4: v2ray
        flushes it when a tunnel fails before the target answered), so the
        client sees a closed tunnel rather than a broken handshake."""
        if self._started or self._closed or self._broken:
            await trio.lowlevel.checkpoint()
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError):
            await self._send(b"", self._conn.send_data)

    async def send_eof(self) -> None:
        with self._send_guard:
            self._check_open()
            if self._eof_sent:
                await trio.lowlevel.checkpoint()
                return
            self._eof_sent = True
            conn = self._conn
            await self._write(self._encode(b"", conn.send_data) + conn.send_eof())

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receive_guard:
            self._check_open()
            # operator.index refuses floats, as trio's own streams do.
            limit = RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
            if limit < 1:
                raise ValueError("max_bytes must be at least 1")
            if self._pending or self._eof_received:
                await trio.lowlevel.checkpoint()
            else:
                while (decoded := self._decoded(limit)) is None:
                    await self._fill()
                self._pending = decoded
            return self._take(limit)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Data that has arrived and decodes now, without waiting or a
        checkpoint: None when more bytes are needed, b"" at the end. See
        :meth:`TCPStream.receive_nowait`."""
        with self._receive_guard:
            self._check_open()
            if not self._pending and not self._eof_received:
                decoded = self._decoded(RECEIVE_SIZE)
                if decoded is None:
                    return None
                self._pending = decoded
            return self._take(max_bytes)

    def _take(self, limit: int) -> bytes:
        out, self._pending = self._pending[:limit], self._pending[limit:]
        return out

    def _decoded(self, limit: int) -> bytes | None:
        """Every chunk's data that is complete now, joined (up to about
        ``limit``), b"" at the end of the stream, None if more bytes must
        come first.

        Joining the chunks a single transport read brought in lets the relay
        write them with one send instead of one per chunk (peers write chunks
        of 2 KiB to 15 KiB).
        """
        parts: list[bytes] = []
        size = 0
        while size < limit and not self._eof_received:
            event = self._event_now()
            if isinstance(event, Data):
                parts.append(event.data)
                size += len(event.data)
            elif isinstance(event, EndOfStream):
                self._eof_received = True
            elif event is NEED_DATA:
                break
            else:
                self._handle_control(event)
        if parts:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        return b"" if self._eof_received else None

    def _handle_control(self, event: Event) -> None:
        if isinstance(event, ResponseHeader):
            if self.on_response is not None:
                self.on_response(event.command)
            return
        raise LocalProtocolError(f"unexpected {type(event).__name__} in a stream")


class VMessDatagramChannel(_VMessBase):
    """A VMess UDP tunnel (command 2): one datagram per chunk, one destination."""

    @classmethod
    def from_stream(cls, stream: VMessStream) -> VMessDatagramChannel:
        """Reuse an accepted server stream whose request was UDP."""
        channel = cls(stream.transport_stream, stream._conn)
        channel.response_command = stream.response_command
        return channel

    async def send(self, payload: bytes) -> None:
        """Send one datagram (empty ones cannot be carried and are dropped)."""
        with self._send_guard:
            self._check_open()
            await self._send(payload, self._conn.send_datagram)

    async def receive(self) -> bytes | None:
        """The next datagram, or None when the peer ended the tunnel."""
        with self._receive_guard:
            self._check_open()
            while True:
                event = await self._next_event()
                if isinstance(event, Datagram):
                    return event.payload
                if isinstance(event, Data):
                    # A zero/unchunked UDP body has no datagram boundaries.
                    return event.data
                if isinstance(event, EndOfStream):
                    return None
                if isinstance(event, ResponseHeader):
                    continue
                raise LocalProtocolError(
                    f"unexpected {type(event).__name__} in a UDP tunnel"
                )
