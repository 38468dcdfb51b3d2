"""HTTP/2 (RFC 9113), as much of it as a gRPC tunnel needs, sans-IO.

Theory of operation: :class:`H2Connection` turns received bytes into events
(:class:`HeadersReceived`, :class:`DataReceived`, :class:`StreamReset`,
:class:`WindowOpened`, :class:`GoAway`, :class:`PingAnswered`) and queues the
frames its methods produce for :meth:`H2Connection.data_to_send`. It answers
SETTINGS and PING itself; :meth:`ping` sends one (keepalives). Flow control
runs both ways: a sender asks :meth:`send_window` how much it may send; a
reader reports what it consumed with :meth:`consumed`, and window updates go
out once half a window is used, so a reader that stops reading stops the
peer (no unbounded buffering). Priorities are read and
ignored; server push is refused in our SETTINGS. A violation raises
:class:`H2Error` with the code the caller's GOAWAY should carry
(:meth:`close`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import hpack
from vtrio.protocol.hpack import Header

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEAD = struct.Struct("!IBI")  # length << 8 | type, flags, stream id
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
MAX_WINDOW = 2**31 - 1
# What vtrio lets a peer send ahead, per stream and for the connection: a
# fast download needs a few round trips' worth in flight.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Frames we accept up to this size (the most SETTINGS_MAX_FRAME_SIZE allows
# is 16 MiB; more than a large read buys nothing).
RECEIVE_FRAME_SIZE = 256 * 1024
MAX_HEADER_BLOCK = 65536
MAX_CONCURRENT_STREAMS = 1024
# Frames queued in answer to the peer (PING and SETTINGS acknowledgements,
# resets of its streams) and not yet taken for sending: a peer that sends
# such frames without reading the answers is stopped here (as Go's server
# does, at the same count) instead of growing memory.
MAX_UNSENT_ANSWERS = 10000


class FrameType(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    ENHANCE_YOUR_CALM = 11


END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20


class H2Error(RemoteProtocolError):
    """The peer broke HTTP/2: the connection must end with ``code``."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR):
        super().__init__(f"HTTP/2: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """A header block: a request, a response or trailers."""

    stream_id: int
    headers: list[Header]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool
    # Flow-controlled length (with padding): what to pass to consumed().
    flow_length: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """A send window grew: blocked senders may go on."""


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer takes no new streams above ``last_stream_id``."""

    last_stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The peer acknowledged our PING carrying ``payload``."""

    payload: bytes


Event = (
    HeadersReceived | DataReceived | StreamReset | WindowOpened | GoAway | PingAnswered
)


@dataclass(slots=True)
class _Stream:
    send_window: int
    receive_window: int
    unacknowledged: int = 0  # consumed, not yet given back in a WINDOW_UPDATE
    local_ended: bool = False
    remote_ended: bool = False


class H2Connection:
    """One HTTP/2 connection, either side."""

    def __init__(self, *, client: bool) -> None:
        self.client = client
        self._decoder = hpack.Decoder()
        self._buffer = bytearray()
        # Frames queued, as pieces (a DATA payload is not copied until sent).
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._unsent_answers = 0
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._highest_remote = 0  # the highest stream id the peer opened
        self._preface_pending = not client
        self._peer_window = DEFAULT_WINDOW  # initial stream send window
        self._peer_frame_size = DEFAULT_FRAME_SIZE
        self.peer_max_streams = MAX_WINDOW  # no limit until SETTINGS say one
        self._send_window = DEFAULT_WINDOW  # the connection's
        self._receive_window = CONNECTION_WINDOW
        self._unacknowledged = 0
        self._continuing: tuple[int, bytearray, bool] | None = None
        self.goaway_received = False
        if client:
            self._queue(PREFACE)
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_FRAME_SIZE: RECEIVE_FRAME_SIZE,
            Setting.MAX_HEADER_LIST_SIZE: hpack.MAX_HEADER_LIST_SIZE,
        }
        if client:
            settings[Setting.ENABLE_PUSH] = 0
        self._frame(
            FrameType.SETTINGS,
            0,
            0,
            b"".join(struct.pack("!HI", key, value) for key, value in settings.items()),
        )
        self._window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)

    # --- what goes out --------------------------------------------------

    @property
    def pending_output(self) -> int:
        """Bytes queued for data_to_send."""
        return self._out_size

    def data_to_send(self) -> bytes:
        """Every frame queued so far, in one buffer."""
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        self._unsent_answers = 0
        return out

    def _queue(self, piece: bytes | memoryview) -> None:
        self._out.append(piece)
        self._out_size += len(piece)

    def _frame(
        self, kind: int, flags: int, stream_id: int, *payload: bytes | memoryview
    ) -> None:
        length = sum(len(piece) for piece in payload)
        self._queue(_FRAME_HEAD.pack(length << 8 | kind, flags, stream_id))
        for piece in payload:
            if piece:
                self._queue(piece)

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack("!I", increment))

    def open_stream(self) -> int:
        """A new client stream's id (its HEADERS go out with send_headers)."""
        assert self.client
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        self._streams[stream_id] = _Stream(self._peer_window, STREAM_WINDOW)
        return stream_id

    @property
    def stream_ids_left(self) -> bool:
        return self._next_stream_id < MAX_WINDOW and not self.goaway_received

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def send_headers(
        self, stream_id: int, headers: list[Header], *, end_stream: bool = False
    ) -> None:
        block = hpack.encode(headers)
        size = self._peer_frame_size
        first, block = block[:size], block[size:]
        flags = (END_STREAM if end_stream else 0) | (0 if block else END_HEADERS)
        self._frame(FrameType.HEADERS, flags, stream_id, first)
        while block:
            part, block = block[:size], block[size:]
            self._frame(
                FrameType.CONTINUATION, 0 if block else END_HEADERS, stream_id, part
            )
        if end_stream:
            self._end_local(stream_id)

    def end_stream(self, stream_id: int, trailers: list[Header] | None = None) -> None:
        """End our side of a stream: an empty END_STREAM DATA frame, or
        ``trailers``; nothing if the stream is already gone (reset)."""
        if stream_id not in self._streams:
            return
        if trailers is None:
            self.send_data(stream_id, end_stream=True)
        else:
            self.send_headers(stream_id, trailers, end_stream=True)

    def send_window(self, stream_id: int) -> int:
        """How many DATA bytes ``stream_id`` may send now."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, min(self._send_window, stream.send_window))

    def send_data(
        self, stream_id: int, *pieces: bytes | memoryview, end_stream: bool = False
    ) -> None:
        """DATA frames carrying ``pieces`` one after another (together they
        must fit ``send_window``). They are queued, not copied, so they must
        stay as they are until sent."""
        stream = self._streams[stream_id]
        total = sum(len(piece) for piece in pieces)
        assert total <= self.send_window(stream_id)
        stream.send_window -= total
        self._send_window -= total
        size = self._peer_frame_size
        frames: list[list[memoryview]] = [[]]
        room = size
        for piece in pieces:
            view = memoryview(piece)
            while view:
                if not room:
                    frames.append([])
                    room = size
                part = view[:room]
                frames[-1].append(part)
                room -= len(part)
                view = view[len(part) :]
        for index, parts in enumerate(frames):
            last = index == len(frames) - 1
            flags = END_STREAM if end_stream and last else 0
            self._frame(FrameType.DATA, flags, stream_id, *parts)
        if end_stream:
            self._end_local(stream_id)

    def consumed(self, stream_id: int, length: int) -> None:
        """The reader took ``length`` flow-controlled bytes: give them back to
        the peer once half a window has been used (fewer, larger updates)."""
        self._unacknowledged += length
        if self._unacknowledged >= CONNECTION_WINDOW // 2:
            self._window_update(0, self._unacknowledged)
            self._receive_window += self._unacknowledged
            self._unacknowledged = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            return
        stream.unacknowledged += length
        if stream.unacknowledged >= STREAM_WINDOW // 2:
            self._window_update(stream_id, stream.unacknowledged)
            stream.receive_window += stream.unacknowledged
            stream.unacknowledged = 0

    def ping(self, payload: bytes) -> None:
        """A PING (8 bytes of ``payload``) the peer must answer."""
        assert len(payload) == 8
        self._frame(FrameType.PING, 0, 0, payload)

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._frame(FrameType.RST_STREAM, 0, stream_id, struct.pack("!I", code))

    def _answer(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """Queue a frame the peer's frame calls for, within MAX_UNSENT_ANSWERS."""
        self._unsent_answers += 1
        if self._unsent_answers > MAX_UNSENT_ANSWERS:
            raise H2Error(
                "the peer sends control frames without reading the answers",
                ErrorCode.ENHANCE_YOUR_CALM,
            )
        self._frame(kind, flags, stream_id, payload)

    def _refuse(self, stream_id: int, code: ErrorCode) -> None:
        """Reset a stream of the peer's in answer to its frame."""
        self._answer(FrameType.RST_STREAM, 0, stream_id, struct.pack("!I", code))

    def _opens_new_stream(self, stream_id: int) -> bool:
        """``stream_id`` is one the peer has not used yet and may open
        (a client opens odd ones, a server none: push is off)."""
        peer_parity = 0 if self.client else 1
        return stream_id % 2 == peer_parity and stream_id > self._highest_remote

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """GOAWAY: no stream above the last one the peer opened will be served."""
        self._frame(
            FrameType.GOAWAY, 0, 0, struct.pack("!II", self._highest_remote, code)
        )

    def _end_local(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        stream.local_ended = True
        if stream.remote_ended:
            del self._streams[stream_id]

    # --- what comes in --------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events in ``data`` (frames may span calls).

        Raises:
            H2Error: the peer broke the protocol; send ``close(error.code)``.
        """
        self._buffer += data
        events: list[Event] = []
        if self._preface_pending:
            if len(self._buffer) < len(PREFACE):
                if not PREFACE.startswith(self._buffer):
                    raise H2Error("no connection preface")
                return events
            if not self._buffer.startswith(PREFACE):
                raise H2Error("no connection preface")
            del self._buffer[: len(PREFACE)]
            self._preface_pending = False
        buffer = self._buffer
        offset = 0
        with memoryview(buffer) as view:  # one copy per payload, not two
            while len(view) - offset >= _FRAME_HEAD.size:
                length_type, flags, stream_id = _FRAME_HEAD.unpack_from(view, offset)
                length, kind = length_type >> 8, length_type & 0xFF
                if length > RECEIVE_FRAME_SIZE:
                    raise H2Error(
                        f"a {length}-byte frame is over the limit",
                        ErrorCode.FRAME_SIZE_ERROR,
                    )
                end = offset + _FRAME_HEAD.size + length
                if end > len(view):
                    break
                payload = bytes(view[offset + _FRAME_HEAD.size : end])
                offset = end
                self._handle(kind, flags, stream_id & MAX_WINDOW, payload, events)
        del buffer[:offset]
        return events

    def _handle(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._continuing is not None and kind != FrameType.CONTINUATION:
            raise H2Error("a header block was interrupted")
        if kind == FrameType.DATA:
            self._on_data(flags, stream_id, payload, events)
        elif kind == FrameType.HEADERS:
            self._on_headers(flags, stream_id, payload, events)
        elif kind == FrameType.CONTINUATION:
            self._on_continuation(flags, stream_id, payload, events)
        elif kind == FrameType.SETTINGS:
            self._on_settings(flags, stream_id, payload, events)
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, events)
        elif kind == FrameType.RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise H2Error("bad RST_STREAM", ErrorCode.FRAME_SIZE_ERROR)
            if self._streams.pop(stream_id, None) is not None:
                events.append(StreamReset(stream_id, int.from_bytes(payload)))
        elif kind == FrameType.PING:
            if len(payload) != 8 or stream_id:
                raise H2Error("bad PING", ErrorCode.FRAME_SIZE_ERROR)
            if flags & ACK:
                events.append(PingAnswered(payload))
            else:
                self._answer(FrameType.PING, ACK, 0, payload)
        elif kind == FrameType.GOAWAY:
            if len(payload) < 8 or stream_id:
                raise H2Error("bad GOAWAY", ErrorCode.FRAME_SIZE_ERROR)
            last, code = struct.unpack_from("!II", payload)
            self.goaway_received = True
            events.append(GoAway(last & MAX_WINDOW, code))
        elif kind == FrameType.PRIORITY:
            if len(payload) != 5 or not stream_id:
                raise H2Error("bad PRIORITY", ErrorCode.FRAME_SIZE_ERROR)
        elif kind == FrameType.PUSH_PROMISE:
            raise H2Error("server push was refused in our SETTINGS")
        # Unknown frame types are ignored (section 4.1).

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise H2Error("padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _on_data(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if not stream_id:
            raise H2Error("DATA on stream 0")
        self._receive_window -= len(payload)
        if self._receive_window < 0:
            raise H2Error(
                "the connection window overflowed", ErrorCode.FLOW_CONTROL_ERROR
            )
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            # Closed, or reset on our side: the bytes still count for the
            # connection, and go back at once.
            self.consumed(0, len(payload))
            if stream is None and self._opens_new_stream(stream_id):
                raise H2Error("DATA on an idle stream")
            if stream is not None:  # DATA after its END_STREAM
                del self._streams[stream_id]
                events.append(StreamReset(stream_id, ErrorCode.STREAM_CLOSED))
            self._refuse(stream_id, ErrorCode.STREAM_CLOSED)
            return
        stream.receive_window -= len(payload)
        if stream.receive_window < 0:
            raise H2Error("a stream window overflowed", ErrorCode.FLOW_CONTROL_ERROR)
        end = bool(flags & END_STREAM)
        data = self._unpad(flags, payload)
        if end:
            self._end_remote(stream_id, stream)
        events.append(DataReceived(stream_id, data, end, len(payload)))

    def _on_headers(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if not stream_id:
            raise H2Error("HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY:
            block = block[5:]
        if flags & END_HEADERS:
            self._headers_complete(stream_id, block, bool(flags & END_STREAM), events)
        else:
            self._continuing = (stream_id, bytearray(block), bool(flags & END_STREAM))

    def _on_continuation(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise H2Error("CONTINUATION out of place")
        _, block, end_stream = self._continuing
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise H2Error("header block too large")
        if flags & END_HEADERS:
            self._continuing = None
            self._headers_complete(stream_id, bytes(block), end_stream, events)

    def _headers_complete(
        self, stream_id: int, block: bytes, end_stream: bool, events: list[Event]
    ) -> None:
        try:
            headers = self._decoder.decode(block)
        except RemoteProtocolError as exc:
            raise H2Error(str(exc), ErrorCode.COMPRESSION_ERROR) from exc
        stream = self._streams.get(stream_id)
        if stream is None:
            if not self._opens_new_stream(stream_id):
                # A stream we reset, or one the peer may not open: refuse it
                # without ending the connection (the table is up to date).
                self._refuse(stream_id, ErrorCode.STREAM_CLOSED)
                return
            self._highest_remote = stream_id
            if len(self._streams) >= MAX_CONCURRENT_STREAMS:
                self._refuse(stream_id, ErrorCode.REFUSED_STREAM)
                return
            stream = self._streams[stream_id] = _Stream(
                self._peer_window, STREAM_WINDOW
            )
        elif stream.remote_ended:
            raise H2Error("HEADERS after the end of a stream", ErrorCode.STREAM_CLOSED)
        if end_stream:
            self._end_remote(stream_id, stream)
        events.append(HeadersReceived(stream_id, headers, end_stream))

    def _end_remote(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            del self._streams[stream_id]

    def _on_settings(
        self, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if stream_id:
            raise H2Error("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2Error("SETTINGS ACK with a payload", ErrorCode.FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise H2Error("SETTINGS of a bad length", ErrorCode.FRAME_SIZE_ERROR)
        for key, value in struct.iter_unpack("!HI", payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error("window too large", ErrorCode.FLOW_CONTROL_ERROR)
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                events.append(WindowOpened())
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise H2Error("bad SETTINGS_MAX_FRAME_SIZE")
                self._peer_frame_size = value
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise H2Error("bad SETTINGS_ENABLE_PUSH")
            # The others limit what we send: headers stay small, streams few.
        self._answer(FrameType.SETTINGS, ACK, 0, b"")

    def _on_window_update(
        self, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if len(payload) != 4:
            raise H2Error("bad WINDOW_UPDATE", ErrorCode.FRAME_SIZE_ERROR)
        increment = int.from_bytes(payload) & MAX_WINDOW
        if not increment:
            raise H2Error("a WINDOW_UPDATE of 0")
        if not stream_id:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2Error("window too large", ErrorCode.FLOW_CONTROL_ERROR)
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return  # a closed stream's: harmless
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self.reset_stream(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
                events.append(StreamReset(stream_id, ErrorCode.FLOW_CONTROL_ERROR))
                return
        events.append(WindowOpened())
