"""The gRPC transport (v2ray's, Xray's and sing-box's "gun"): each tunnel is
one HTTP/2 stream, a bidirectional gRPC call whose messages carry its bytes.

Theory of operation: a :class:`_Session` runs one HTTP/2 connection (over
TLS with ALPN ``h2``, or cleartext with prior knowledge, as Xray's and
sing-box's do without TLS). Its reader task feeds the sans-IO
:class:`~vtrio.protocol.http2.H2Connection` and hands each stream's DATA to
its :class:`GrpcStream`; frames from every stream are queued in the core in
order; a call writes its own when no write is under way, a writer task the
rest (a sender waits while the backlog is large; the reader never waits on
the peer). A server session answers each
call on an accepted path and runs the tunnel in its own task, behind the
same error boundary as a TCP connection; a client keeps one session per
server and opens a stream per tunnel, a new connection when the peer refuses
more streams, goes away or breaks. Half-close is END_STREAM (the client's)
or the trailers (``grpc-status: 0``, the server's); closing early resets the
stream.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import trio

from vtrio.errors import RemoteProtocolError
from vtrio.net.transport.shared import write_shared
from vtrio.net.transport.tcp import address_name
from vtrio.protocol.gun import HunkDecoder, hunk_head, service_path
from vtrio.protocol.http2 import (
    DataReceived,
    ErrorCode,
    GoAway,
    H2Connection,
    H2Error,
    HeadersReceived,
    StreamReset,
    WindowOpened,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import GrpcSettings
    from vtrio.protocol.hpack import Header

LOGGER = logging.getLogger("vtrio.net.transport.grpc")

RECEIVE_SIZE = 65536
# A client connection with no tunnel left closes after this long.
CLIENT_IDLE = 60.0
# A server connection with no tunnel closes after this long (v2ray's connIdle).
SERVER_IDLE = 300.0
# How long a closing stream may wait to send its reset.
CLOSE_GRACE = 1.0
# Queued frames beyond which a call's send waits for the writer.
HIGH_WATER = 256 * 1024
_GRPC_CONTENT = b"application/grpc"
_USER_AGENT = "grpc-go/1.58.0"


class GrpcStream(trio.abc.HalfCloseableStream):
    """One tunnel: a gRPC call on a shared HTTP/2 connection."""

    def __init__(self, session: _Session, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self._decoder = HunkDecoder()
        self._payloads: deque[bytes] = deque()
        self._unconsumed = 0  # flow-controlled bytes behind _payloads
        self._arrived = trio.Event()
        self._remote_ended = False
        self._local_ended = False
        self._broken: str | None = None
        self._closed = False

    # --- fed by the session's reader ---

    def _on_data(self, data: bytes, flow_length: int, end: bool) -> None:
        try:
            self._payloads.extend(self._decoder.receive_data(data))
        except RemoteProtocolError as exc:  # a malformed message breaks this call only
            self._fail(str(exc))
            self._session.reset(self.stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        self._unconsumed += flow_length
        if not self._payloads:  # framing only: nothing for the reader to take
            self._session.consumed(self.stream_id, self._unconsumed)
            self._unconsumed = 0
        if end:
            self._remote_ended = True
            if self._decoder.pending:
                self._fail("the call ended inside a gRPC message")
        self._arrived.set()

    def _on_end(self) -> None:
        self._remote_ended = True
        self._arrived.set()

    def _fail(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._arrived.set()
        self._session.wake_senders()

    # --- the stream ---

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._payloads:
            if self._closed:
                raise trio.ClosedResourceError("the gRPC stream is closed")
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            if self._remote_ended:
                await trio.lowlevel.checkpoint()
                return b""
            self._arrived = trio.Event()
            await self._arrived.wait()
        payload = self._payloads.popleft()
        if max_bytes is not None and len(payload) > max_bytes:
            self._payloads.appendleft(payload[max_bytes:])
            payload = payload[:max_bytes]
        if not self._payloads and self._unconsumed:
            self._session.consumed(self.stream_id, self._unconsumed)
            self._unconsumed = 0
            self._session.kick()
        await trio.lowlevel.checkpoint()
        return payload

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._local_ended or self._closed:
            raise trio.ClosedResourceError("the gRPC stream was closed for sending")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        # A bytearray could change while its frames wait: that one is copied.
        payload = data if isinstance(data, bytes) else bytes(data)
        await self._session.send(self, hunk_head(len(payload)), payload)

    def check_sendable(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        if self._session.broken is not None:
            raise trio.BrokenResourceError(self._session.broken)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        if self._local_ended or self._closed:
            await trio.lowlevel.checkpoint()
            return
        self.check_sendable()
        self._local_ended = True
        self._session.end(self.stream_id)
        await self._session.flush()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._session.forget(self, finished=self._local_ended and self._remote_ended)
        self._session.kick()
        await trio.lowlevel.checkpoint()


class _Session:
    """One HTTP/2 connection and its gRPC calls."""

    def __init__(
        self, transport: trio.abc.Stream, *, client: bool, first_call_within: float = 0
    ) -> None:
        """``first_call_within``: a server's bound on the wait for the first
        call (its handshake timeout), after which the idle time applies."""
        self._transport = transport
        self._h2 = H2Connection(client=client)
        self._client = client
        self._calls: dict[int, GrpcStream] = {}
        self._write_lock = trio.Lock()
        self._queued = trio.Event()  # the core has frames for the writer
        self._drained = trio.Event()  # the writer took what was queued
        self._window = trio.Event()
        self.broken: str | None = None
        self._idle_scope = trio.CancelScope()
        self._idle = CLIENT_IDLE if client else first_call_within or SERVER_IDLE
        self._mark_idle()

    @property
    def usable(self) -> bool:
        """A client session that can take another call."""
        return (
            self.broken is None
            and self._h2.stream_ids_left
            and self._h2.open_streams < self._h2.peer_max_streams
        )

    def _mark_idle(self) -> None:
        self._idle_scope.deadline = (
            trio.current_time() + self._idle if not self._calls else math.inf
        )

    # --- writing ---
    # A call's task writes its own frames when no write is under way (one task
    # switch fewer per chunk), shielded so that a frame is never cut; else, and
    # for everything the reader queues, the writer task does. The reader never
    # writes: were it to write its window updates itself, two peers whose
    # socket buffers are full both ways would each wait for the other to read.

    def kick(self) -> None:
        """Have the writer send what the core has queued."""
        self._queued.set()

    async def flush(self) -> None:
        """Send what the core has queued, or leave it to the write under way;
        then wait while the frames not taken yet are many, so that a peer that
        reads slowly slows the writers down rather than growing memory."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._write_lock.locked():
            self._write_lock.acquire_nowait()
            try:
                await self._write(self._h2.data_to_send())
            finally:
                self._write_lock.release()
        else:
            self.kick()
            while self._h2.pending_output > HIGH_WATER and self.broken is None:
                await self._drained.wait()
        if self.broken is not None:
            raise trio.BrokenResourceError(self.broken)

    async def _write(self, data: bytes) -> None:
        if data and self.broken is None:
            try:
                await write_shared(self._transport, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._break(f"the gRPC connection broke: {exc}")

    async def _write_loop(self) -> None:
        while self.broken is None:
            async with self._write_lock:
                data = self._h2.data_to_send()
                self._drained.set()  # the backlog is taken: senders may queue more
                self._drained = trio.Event()
                await self._write(data)
            if not data:
                self._queued = trio.Event()
                await self._queued.wait()
        await trio.aclose_forcefully(self._transport)  # the reader stops too

    async def send(self, call: GrpcStream, *pieces: bytes) -> None:
        """DATA for ``pieces``, as the windows allow."""
        views = [memoryview(piece) for piece in pieces if piece]
        while views:
            call.check_sendable()
            window = self._h2.send_window(call.stream_id)
            if not window:
                opened = self._window
                await opened.wait()
                continue
            taken = []
            while views and window:
                view = views[0][:window]
                taken.append(view)
                window -= len(view)
                if len(view) == len(views[0]):
                    views.pop(0)
                else:
                    views[0] = views[0][len(view) :]
            self._h2.send_data(call.stream_id, *taken)
            await self.flush()

    def consumed(self, stream_id: int, length: int) -> None:
        self._h2.consumed(stream_id, length)

    def end(self, stream_id: int) -> None:
        self._h2.end_stream(
            stream_id, None if self._client else [(b"grpc-status", b"0")]
        )

    def wake_senders(self) -> None:
        """Calls waiting for a send window look again (it grew, or their
        call or the connection broke)."""
        self._window.set()
        self._window = trio.Event()

    def reset(self, stream_id: int, code: ErrorCode) -> None:
        self._h2.reset_stream(stream_id, code)

    def forget(self, call: GrpcStream, *, finished: bool) -> None:
        if self._calls.pop(call.stream_id, None) is not None and not finished:
            self._h2.reset_stream(call.stream_id, ErrorCode.CANCEL)
        self._mark_idle()

    # --- reading ---

    async def run(
        self,
        on_call: Callable[[GrpcStream], None] | None,
        paths: frozenset[str] = frozenset(),
    ) -> None:
        """Read frames until the connection ends, it breaks, or it stays
        without calls for the idle time; then every call breaks.

        Raises:
            H2Error: the peer broke HTTP/2 (a GOAWAY with the reason was sent).
        """
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._write_loop)
                try:
                    with self._idle_scope:
                        await self._read_frames(on_call, paths)
                    if self._idle_scope.cancelled_caught:
                        self._h2.close()
                        self._break("the gRPC connection was idle")
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            self._break("the gRPC connection ended")
            await self._write_final()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._transport)

    async def _read_frames(
        self, on_call: Callable[[GrpcStream], None] | None, paths: frozenset[str]
    ) -> None:
        while True:
            data = await self._transport.receive_some(RECEIVE_SIZE)
            if not data:
                self._break("the gRPC connection closed")
                return
            try:
                events = self._h2.receive_data(data)
            except H2Error as exc:
                self._h2.close(exc.code)
                self._break(str(exc))
                raise
            for event in events:
                self._dispatch(event, on_call, paths)
            self.kick()

    async def _write_final(self) -> None:
        data = self._h2.data_to_send()
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            if data:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await self._transport.send_all(data)

    def _dispatch(
        self,
        event: object,
        on_call: Callable[[GrpcStream], None] | None,
        paths: frozenset[str],
    ) -> None:
        if isinstance(event, DataReceived):
            call = self._calls.get(event.stream_id)
            if call is None:
                self._h2.consumed(event.stream_id, event.flow_length)
            else:
                call._on_data(event.data, event.flow_length, event.end_stream)
        elif isinstance(event, HeadersReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                self._on_headers(call, event)
            elif on_call is not None:
                self._accept(event, on_call, paths)
        elif isinstance(event, StreamReset):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call._fail(f"the peer reset the gRPC call (code {event.code})")
        elif isinstance(event, WindowOpened):
            self.wake_senders()
        elif isinstance(event, GoAway):
            for stream_id, call in list(self._calls.items()):
                if stream_id > event.last_stream_id:
                    call._fail("the peer went away before the call started")

    def _on_headers(self, call: GrpcStream, event: HeadersReceived) -> None:
        fields = dict(event.headers)
        status = fields.get(b":status")
        if self._client and status is not None and status != b"200":
            call._fail(
                f"the gRPC server answered HTTP {status.decode(errors='replace')}"
            )
        elif b"grpc-status" in fields and fields[b"grpc-status"] != b"0":
            message = fields.get(b"grpc-message", b"").decode(errors="replace")
            call._fail(f"gRPC status {fields[b'grpc-status'].decode()} {message}")
        if event.end_stream:
            call._on_end()

    def _accept(
        self,
        event: HeadersReceived,
        on_call: Callable[[GrpcStream], None],
        paths: frozenset[str],
    ) -> None:
        fields = dict(event.headers)
        path = fields.get(b":path", b"").decode(errors="replace")
        if (
            fields.get(b":method") != b"POST"
            or path not in paths
            or not fields.get(b"content-type", b"").startswith(_GRPC_CONTENT)
        ):
            LOGGER.debug(
                "gRPC: refused a %r request for %r", fields.get(b":method"), path
            )
            self._h2.send_headers(
                event.stream_id, [(b":status", b"404")], end_stream=True
            )
            return
        call = GrpcStream(self, event.stream_id)
        self._calls[event.stream_id] = call
        self._idle = SERVER_IDLE
        self._mark_idle()
        self._h2.send_headers(
            event.stream_id, [(b":status", b"200"), (b"content-type", _GRPC_CONTENT)]
        )
        if event.end_stream:
            call._on_end()
        on_call(call)

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        for call in self._calls.values():
            call._fail(reason)
        self.wake_senders()
        self._drained.set()
        self._queued.set()

    # --- client calls ---

    async def open_call(self, headers: list[Header]) -> GrpcStream:
        stream_id = self._h2.open_stream()
        call = GrpcStream(self, stream_id)
        self._calls[stream_id] = call
        self._mark_idle()
        self._h2.send_headers(stream_id, headers)
        await self.flush()
        return call


def request_headers(settings: GrpcSettings, authority: str) -> list[Header]:
    """The HEADERS of a client's call, as grpc-go sends them."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (
            b":path",
            service_path(settings.service_name, multi=settings.multi_mode).encode(),
        ),
        (b":authority", (settings.authority or authority).encode()),
        (b"content-type", _GRPC_CONTENT),
        (b"user-agent", (settings.user_agent or _USER_AGENT).encode()),
        (b"te", b"trailers"),
    ]


def accepted_paths(settings: GrpcSettings) -> frozenset[str]:
    """The paths a server answers: both methods, as Xray's server does."""
    return frozenset(
        service_path(settings.service_name, multi=multi) for multi in (False, True)
    )


async def serve_grpc(
    settings: GrpcSettings,
    transport: trio.abc.Stream,
    handle_call: Callable[[GrpcStream], Awaitable[None]],
    first_call_within: float,
) -> None:
    """Serve gRPC tunnels on one accepted connection until it ends; each call
    runs ``handle_call`` in a task of its own, and is closed after it. A
    connection that opens no call within ``first_call_within`` seconds
    closes."""
    session = _Session(transport, client=False, first_call_within=first_call_within)

    async def run_call(call: GrpcStream) -> None:
        try:
            await handle_call(call)
        finally:
            await call.aclose()

    async with trio.open_nursery() as calls:
        await session.run(
            lambda call: calls.start_soon(run_call, call), accepted_paths(settings)
        )
        calls.cancel_scope.cancel()


class GrpcClient:
    """The gRPC connections of one outbound: one per server, shared by its
    tunnels.

    Args:
        settings: the outbound's grpcSettings.
        dial: opens the TCP (or TLS) connection to a server.
    """

    def __init__(
        self,
        settings: GrpcSettings,
        dial: Callable[[str, int], Awaitable[trio.abc.Stream]],
    ) -> None:
        self._settings = settings
        self._dial = dial
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._nursery: trio.Nursery | None = None
        self._opening = trio.Lock()

    def run_in(self, nursery: trio.Nursery) -> None:
        """Where the connections' reader tasks run (the server's)."""
        self._nursery = nursery

    async def open(self, host: str, port: int) -> GrpcStream:
        """A tunnel to the server at ``host:port``.

        Raises:
            OSError, DialError: a new connection was needed and failed.
        """
        assert self._nursery is not None, "run_in() first"
        key = (host, port)
        async with self._opening:
            session = self._sessions.get(key)
            if session is None or not session.usable:
                transport = await self._dial(host, port)
                session = _Session(transport, client=True)
                self._sessions[key] = session
                self._nursery.start_soon(self._run, key, session)
            return await session.open_call(
                request_headers(self._settings, address_name((host, port)))
            )

    async def _run(self, key: tuple[str, int], session: _Session) -> None:
        try:
            await session.run(None)
        except H2Error as exc:
            LOGGER.info("gRPC connection to %s:%d: %s", *key, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            LOGGER.debug("gRPC connection to %s:%d: %s", *key, exc)
        finally:
            if self._sessions.get(key) is session:
                del self._sessions[key]
