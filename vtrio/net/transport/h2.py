"""Tunnels as HTTP/2 streams: the gRPC transport (v2ray's, Xray's and
sing-box's "gun") and the HTTP/2 one (v2ray's ``http``, also called h2).

Theory of operation: a :class:`_Session` runs one HTTP/2 connection (over
TLS with ALPN ``h2``, or cleartext with prior knowledge, as Xray's and
sing-box's gRPC and v2ray's h2c server speak it). Its reader task feeds the
sans-IO :class:`~vtrio.protocol.http2.H2Connection` and hands each stream's
DATA to its :class:`H2Tunnel`; frames from every stream are queued in the
core in order; a tunnel writes its own when no write is under way, a writer
task the rest (a sender waits while the backlog is large; the reader never
waits on the peer). A :class:`Flavor` says what is around the bytes: gRPC
calls carry them in Hunk messages and end with trailers, the HTTP/2
transport's PUT requests carry them bare. A server session answers each
request the flavor accepts and runs the tunnel in its own task, behind the
same error boundary as a TCP connection; a client keeps one session per
server and opens a stream per tunnel, a new connection when the peer
refuses more streams, goes away or breaks. Half-close is END_STREAM (the
client's) or the end of the response; closing early resets the stream.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import random
from collections import deque
from typing import TYPE_CHECKING, ClassVar, Protocol

import trio

from vtrio.errors import RemoteProtocolError
from vtrio.net.transport.shared import write_shared
from vtrio.net.transport.tcp import address_name
from vtrio.protocol.gun import HunkDecoder, hunk_head, service_path
from vtrio.protocol.http2 import (
    MAX_CONCURRENT_STREAMS,
    DataReceived,
    ErrorCode,
    GoAway,
    H2Connection,
    H2Error,
    HeadersReceived,
    PingAnswered,
    StreamReset,
    WindowOpened,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.config.model import (
        GrpcSettings,
        H2Keepalive,
        H2Settings,
        StreamSettings,
    )
    from vtrio.protocol.hpack import Header

LOGGER = logging.getLogger("vtrio.net.transport.h2")

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
_NOT_FOUND: list[Header] = [(b":status", b"404")]


class H2Tunnel(trio.abc.HalfCloseableStream):
    """One tunnel: a stream (a gRPC call, an HTTP/2 request) on a shared
    HTTP/2 connection."""

    def __init__(self, session: _Session, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self._framing = session.flavor.framing()
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
            self._payloads.extend(self._framing.receive_data(data))
        except RemoteProtocolError as exc:  # a bad message breaks this tunnel only
            self._fail(str(exc))
            self._session.reset(self.stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        self._unconsumed += flow_length
        if not self._payloads:  # framing only: nothing for the reader to take
            self._session.consumed(self.stream_id, self._unconsumed)
            self._unconsumed = 0
        if end:
            self._remote_ended = True
            if self._framing.pending:
                self._fail("the stream ended inside a message")
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
                raise trio.ClosedResourceError("the HTTP/2 tunnel is closed")
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
            raise trio.ClosedResourceError("the HTTP/2 tunnel was closed for sending")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        # A bytearray could change while its frames wait: that one is copied.
        payload = data if isinstance(data, bytes) else bytes(data)
        head = self._session.flavor.message_head(len(payload))
        await self._session.send(self, head, payload)

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
    """One HTTP/2 connection and its tunnels."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        flavor: Flavor,
        *,
        client: bool,
        first_call_within: float = 0,
    ) -> None:
        """``first_call_within``: a server's bound on the wait for the first
        call (its handshake timeout), after which the idle time applies."""
        self._transport = transport
        self.flavor = flavor
        self._h2 = H2Connection(client=client)
        self._client = client
        self._calls: dict[int, H2Tunnel] = {}
        self._write_lock = trio.Lock()
        self._queued = trio.Event()  # the core has frames for the writer
        self._drained = trio.Event()  # the writer took what was queued
        self._window = trio.Event()
        self.broken: str | None = None
        self._idle_scope = trio.CancelScope()
        self._last_read = trio.current_time()
        self._ping = b""  # the keepalive PING waiting for its answer
        self._ping_answered = trio.Event()
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
                self._break(f"the HTTP/2 connection broke: {exc}")

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

    async def send(self, call: H2Tunnel, *pieces: bytes) -> None:
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
        self._h2.end_stream(stream_id, None if self._client else self.flavor.trailers)

    def wake_senders(self) -> None:
        """Calls waiting for a send window look again (it grew, or their
        call or the connection broke)."""
        self._window.set()
        self._window = trio.Event()

    def reset(self, stream_id: int, code: ErrorCode) -> None:
        self._h2.reset_stream(stream_id, code)

    def forget(self, call: H2Tunnel, *, finished: bool) -> None:
        if self._calls.pop(call.stream_id, None) is not None and not finished:
            self._h2.reset_stream(call.stream_id, ErrorCode.CANCEL)
        self._mark_idle()

    # --- reading ---

    async def run(self, on_call: Callable[[H2Tunnel], None] | None) -> None:
        """Read frames until the connection ends, it breaks, or it stays
        without calls for the idle time; then every call breaks.

        Raises:
            H2Error: the peer broke HTTP/2 (a GOAWAY with the reason was sent).
        """
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._write_loop)
                if self.flavor.keepalive is not None:
                    tasks.start_soon(self._keep_alive, self.flavor.keepalive)
                try:
                    with self._idle_scope:
                        await self._read_frames(on_call)
                    if self._idle_scope.cancelled_caught:
                        self._h2.close()
                        self._break("the HTTP/2 connection was idle")
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            self._break("the HTTP/2 connection ended")
            await self._write_final()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._transport)

    async def _read_frames(self, on_call: Callable[[H2Tunnel], None] | None) -> None:
        while True:
            data = await self._transport.receive_some(RECEIVE_SIZE)
            self._last_read = trio.current_time()
            if not data:
                self._break("the HTTP/2 connection closed")
                return
            try:
                events = self._h2.receive_data(data)
            except H2Error as exc:
                self._h2.close(exc.code)
                self._break(str(exc))
                raise
            for event in events:
                self._dispatch(event, on_call)
            self.kick()

    async def _keep_alive(self, keepalive: H2Keepalive) -> None:
        """PING when nothing was read for ``keepalive.idle`` seconds (while
        tunnels run, unless ``without_tunnels``); a PING unanswered within
        ``keepalive.timeout`` means the peer or the path is gone."""
        while self.broken is None:
            quiet_until = self._last_read + keepalive.idle
            if trio.current_time() < quiet_until:
                await trio.sleep_until(quiet_until)
                continue
            if not self._calls and not keepalive.without_tunnels:
                await trio.sleep(keepalive.idle)
                continue
            self._ping, self._ping_answered = os.urandom(8), trio.Event()
            self._h2.ping(self._ping)
            self.kick()
            with trio.move_on_after(keepalive.timeout):
                await self._ping_answered.wait()
            if not self._ping_answered.is_set():
                reason = "the HTTP/2 connection did not answer a keepalive PING"
                LOGGER.info("%s in %.0f s", reason, keepalive.timeout)
                self._break(reason)
                await trio.aclose_forcefully(self._transport)  # the reader stops

    async def _write_final(self) -> None:
        data = self._h2.data_to_send()
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            if data:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await self._transport.send_all(data)

    def _dispatch(
        self, event: object, on_call: Callable[[H2Tunnel], None] | None
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
                self._accept(event, on_call)
        elif isinstance(event, StreamReset):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call._fail(f"the peer reset the stream (code {event.code})")
        elif isinstance(event, WindowOpened):
            self.wake_senders()
        elif isinstance(event, PingAnswered):
            if event.payload == self._ping:
                self._ping_answered.set()
        elif isinstance(event, GoAway):
            for stream_id, call in list(self._calls.items()):
                if stream_id > event.last_stream_id:
                    call._fail("the peer went away before the call started")

    def _on_headers(self, call: H2Tunnel, event: HeadersReceived) -> None:
        fields = dict(event.headers)
        status = fields.get(b":status")
        if self._client and status is not None and status != b"200":
            call._fail(f"the server answered HTTP {status.decode(errors='replace')}")
        elif b"grpc-status" in fields and fields[b"grpc-status"] != b"0":
            message = fields.get(b"grpc-message", b"").decode(errors="replace")
            call._fail(f"gRPC status {fields[b'grpc-status'].decode()} {message}")
        if event.end_stream:
            call._on_end()

    def _accept(
        self, event: HeadersReceived, on_call: Callable[[H2Tunnel], None]
    ) -> None:
        fields = dict(event.headers)
        if not self.flavor.accepts(fields):
            LOGGER.debug(
                "HTTP/2: refused a %r request for %r",
                fields.get(b":method"),
                fields.get(b":path"),
            )
            self._h2.send_headers(event.stream_id, _NOT_FOUND, end_stream=True)
            return
        if len(self._calls) >= MAX_CONCURRENT_STREAMS:
            # The core counts open streams; this counts the tunnels still
            # running, which a peer that resets its streams at once (the
            # "rapid reset" flood) would otherwise multiply.
            self._h2.reset_stream(event.stream_id, ErrorCode.REFUSED_STREAM)
            return
        call = H2Tunnel(self, event.stream_id)
        self._calls[event.stream_id] = call
        self._idle = SERVER_IDLE
        self._mark_idle()
        self._h2.send_headers(event.stream_id, self.flavor.response)
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

    async def open_call(self, headers: list[Header]) -> H2Tunnel:
        stream_id = self._h2.open_stream()
        call = H2Tunnel(self, stream_id)
        self._calls[stream_id] = call
        self._mark_idle()
        self._h2.send_headers(stream_id, headers)
        await self.flush()
        return call


class Flavor(abc.ABC):
    """What one kind of HTTP/2 tunnel puts around the bytes."""

    # The server's answer to a request it accepts, and the end of its
    # response: trailers, or (None) an empty END_STREAM DATA frame.
    response: ClassVar[list[Header]]
    trailers: ClassVar[list[Header] | None] = None
    keepalive: H2Keepalive | None = None

    @abc.abstractmethod
    def request(self, authority: str) -> list[Header]:
        """The HEADERS of a client's request to ``authority``."""

    @abc.abstractmethod
    def accepts(self, fields: dict[bytes, bytes]) -> bool:
        """Whether a server serves the request with these headers."""

    def framing(self) -> Framing:
        """What turns a stream's DATA into tunnel bytes."""
        return _Bare()

    def message_head(self, length: int) -> bytes:
        """What goes before ``length`` bytes of tunnel data."""
        return b""


class Framing(Protocol):
    @property
    def pending(self) -> bool:
        """Part of a message waits for the rest."""

    def receive_data(self, data: bytes) -> list[bytes]: ...


class _Bare:
    pending = False

    @staticmethod
    def receive_data(data: bytes) -> list[bytes]:
        return [data] if data else []


class GrpcFlavor(Flavor):
    """A gRPC call of the service's Tun (or TunMulti) method, the bytes in
    Hunk messages (``gun.py``)."""

    response: ClassVar[list[Header]] = [
        (b":status", b"200"),
        (b"content-type", _GRPC_CONTENT),
    ]
    trailers: ClassVar[list[Header] | None] = [(b"grpc-status", b"0")]

    def __init__(self, settings: GrpcSettings) -> None:
        self._settings = settings
        self.keepalive = settings.keepalive
        # A server answers both methods, as Xray's does.
        self._paths = frozenset(
            service_path(settings.service_name, multi=multi).encode()
            for multi in (False, True)
        )

    def request(self, authority: str) -> list[Header]:
        settings = self._settings
        path = service_path(settings.service_name, multi=settings.multi_mode)
        return [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", path.encode()),
            (b":authority", (settings.authority or authority).encode()),
            (b"content-type", _GRPC_CONTENT),
            (b"user-agent", (settings.user_agent or _USER_AGENT).encode()),
            (b"te", b"trailers"),
        ]

    def accepts(self, fields: dict[bytes, bytes]) -> bool:
        return (
            fields.get(b":method") == b"POST"
            and fields.get(b":path") in self._paths
            and fields.get(b"content-type", b"").startswith(_GRPC_CONTENT)
        )

    def framing(self) -> Framing:
        return HunkDecoder()

    def message_head(self, length: int) -> bytes:
        return hunk_head(length)


class HttpFlavor(Flavor):
    """v2ray's HTTP/2 transport: a request (PUT unless set) to the path, its
    body and the response's carrying the bytes bare."""

    response: ClassVar[list[Header]] = [
        (b":status", b"200"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, settings: H2Settings) -> None:
        self._settings = settings
        self.keepalive = settings.keepalive
        self._hosts = {host.encode() for host in settings.hosts}
        self._path = settings.path.encode()

    def request(self, authority: str) -> list[Header]:
        settings = self._settings
        headers = [
            (b":method", settings.method.encode()),
            (b":scheme", b"https"),
            (b":path", self._path),
            (b":authority", random.choice(settings.hosts).encode()),
        ]
        headers += [
            (name.lower().encode(), value.encode())
            for name, values in settings.headers
            for value in values[-1:]  # Go's Header.Set: the last one stays
        ]
        return [*headers, (b"accept-encoding", b"identity")]

    def accepts(self, fields: dict[bytes, bytes]) -> bool:
        # As v2ray: the host must be listed and the path start with ours; the
        # method is not checked.
        host = fields.get(b":authority") or fields.get(b"host", b"")
        return host in self._hosts and fields.get(b":path", b"").startswith(self._path)


def flavor_of(settings: StreamSettings) -> Flavor:
    """The HTTP/2 flavor of a stream whose network is grpc or h2."""
    if settings.network == "grpc":
        return GrpcFlavor(settings.grpc)
    return HttpFlavor(settings.h2)


async def serve_h2(
    flavor: Flavor,
    transport: trio.abc.Stream,
    handle_call: Callable[[H2Tunnel], Awaitable[None]],
    first_call_within: float,
) -> None:
    """Serve tunnels on one accepted connection until it ends; each runs
    ``handle_call`` in a task of its own, and is closed after it. A
    connection that opens no tunnel within ``first_call_within`` seconds
    closes."""
    session = _Session(
        transport, flavor, client=False, first_call_within=first_call_within
    )

    async def run_call(call: H2Tunnel) -> None:
        try:
            await handle_call(call)
        finally:
            await call.aclose()

    async with trio.open_nursery() as calls:
        await session.run(lambda call: calls.start_soon(run_call, call))
        calls.cancel_scope.cancel()


class H2Client:
    """The HTTP/2 connections of one outbound: one per server, shared by its
    tunnels.

    Args:
        flavor: gRPC or the HTTP/2 transport (``flavor_of``).
        dial: opens the TCP (or TLS) connection to a server.
    """

    def __init__(
        self, flavor: Flavor, dial: Callable[[str, int], Awaitable[trio.abc.Stream]]
    ) -> None:
        self._flavor = flavor
        self._dial = dial
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._nursery: trio.Nursery | None = None
        self._opening = trio.Lock()

    def run_in(self, nursery: trio.Nursery) -> None:
        """Where the connections' reader tasks run (the server's)."""
        self._nursery = nursery

    async def open(self, host: str, port: int) -> H2Tunnel:
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
                session = _Session(transport, self._flavor, client=True)
                self._sessions[key] = session
                self._nursery.start_soon(self._run, key, session)
            return await session.open_call(
                self._flavor.request(address_name((host, port)))
            )

    async def _run(self, key: tuple[str, int], session: _Session) -> None:
        """One connection's tasks; whatever ends it stays here (it runs in a
        nursery the server's other connections share)."""
        try:
            await session.run(None)
        except* H2Error as group:
            LOGGER.info("HTTP/2 connection to %s:%d: %s", *key, group.exceptions[0])
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            LOGGER.debug("HTTP/2 connection to %s:%d: %s", *key, group.exceptions[0])
        except* Exception:
            LOGGER.exception("HTTP/2 connection to %s:%d: unexpected error", *key)
        finally:
            if self._sessions.get(key) is session:
                del self._sessions[key]
