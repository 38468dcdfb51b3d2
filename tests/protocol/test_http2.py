"""The sans-IO HTTP/2 core: a client and a server core talking to each other,
and the frames a broken peer sends."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import hpack, http2
from vtrio.protocol.http2 import (
    DataReceived,
    ErrorCode,
    FrameType,
    GoAway,
    H2Connection,
    H2Error,
    HeadersReceived,
    StreamReset,
    WindowOpened,
)

REQUEST = [(b":method", b"POST"), (b":path", b"/svc/Tun"), (b"te", b"trailers")]


def exchange(sender: H2Connection, receiver: H2Connection) -> list[object]:
    return list(receiver.receive_data(sender.data_to_send()))


def connected() -> tuple[H2Connection, H2Connection]:
    client, server = H2Connection(client=True), H2Connection(client=False)
    assert exchange(client, server) == [WindowOpened(), WindowOpened()]
    exchange(server, client)
    exchange(client, server)  # the SETTINGS ACK
    return client, server


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack("!IBI", len(payload) << 8 | kind, flags, stream_id) + payload


def test_a_call_goes_both_ways_and_ends_both_ways() -> None:
    client, server = connected()
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    client.send_data(stream_id, b"up")
    assert exchange(client, server) == [
        HeadersReceived(stream_id, REQUEST, False),
        DataReceived(stream_id, b"up", False, 2),
    ]
    server.send_headers(stream_id, [(b":status", b"200")])
    server.send_data(stream_id, b"down")
    server.end_stream(stream_id, [(b"grpc-status", b"0")])
    assert exchange(server, client) == [
        HeadersReceived(stream_id, [(b":status", b"200")], False),
        DataReceived(stream_id, b"down", False, 4),
        HeadersReceived(stream_id, [(b"grpc-status", b"0")], True),
    ]
    client.end_stream(stream_id)
    assert exchange(client, server) == [DataReceived(stream_id, b"", True, 0)]
    assert (client.open_streams, server.open_streams) == (0, 0)


def test_flow_control_holds_a_sender_to_the_window_until_the_reader_consumes() -> None:
    client, server = connected()
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    exchange(client, server)
    server.send_headers(stream_id, [(b":status", b"200")])
    exchange(server, client)
    # The client's windows are vtrio's: 4 MiB per stream, 16 MiB in all.
    window = server.send_window(stream_id)
    assert window == http2.STREAM_WINDOW
    server.send_data(stream_id, b"x" * window)
    assert server.send_window(stream_id) == 0
    events = exchange(server, client)
    received = sum(e.flow_length for e in events if isinstance(e, DataReceived))
    assert received == window
    # Consuming less than half a window gives nothing back yet.
    client.consumed(stream_id, window // 2 - 1)
    assert client.data_to_send() == b""
    client.consumed(stream_id, 1)
    assert WindowOpened() in exchange(client, server)
    assert server.send_window(stream_id) == window // 2


def test_a_peer_that_overruns_the_window_breaks_the_connection() -> None:
    client, server = connected()
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    exchange(client, server)
    data = frame(FrameType.DATA, 0, stream_id, b"x" * 200_000)
    for _ in range(http2.STREAM_WINDOW // 200_000):
        server.receive_data(data)
    with pytest.raises(H2Error) as caught:
        server.receive_data(data)
    assert caught.value.code == ErrorCode.FLOW_CONTROL_ERROR


def test_pings_are_answered_and_settings_acknowledged() -> None:
    _, server = connected()
    server.receive_data(frame(FrameType.PING, 0, 0, b"12345678"))
    assert server.data_to_send() == frame(FrameType.PING, 1, 0, b"12345678")
    server.receive_data(frame(FrameType.SETTINGS, 0, 0, struct.pack("!HI", 5, 32768)))
    assert server.data_to_send() == frame(FrameType.SETTINGS, 1, 0, b"")


def test_a_larger_peer_window_setting_opens_open_streams() -> None:
    client, _ = connected()
    stream_id = client.open_stream()
    before = client.send_window(stream_id)
    setting = struct.pack("!HI", http2.Setting.INITIAL_WINDOW_SIZE, 2**20)
    assert client.receive_data(frame(FrameType.SETTINGS, 0, 0, setting)) == [
        WindowOpened()
    ]
    assert client.send_window(stream_id) == min(2**20, before + 2**20 - before)


def test_resets_and_goaway_are_events() -> None:
    client, server = connected()
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    exchange(client, server)
    server.reset_stream(stream_id, ErrorCode.CANCEL)
    assert exchange(server, client) == [StreamReset(stream_id, ErrorCode.CANCEL)]
    server.close()
    assert exchange(server, client) == [GoAway(stream_id, 0)]
    assert not client.stream_ids_left


def test_data_for_a_reset_stream_is_refused_and_still_counted() -> None:
    client, server = connected()
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    exchange(client, server)
    server.reset_stream(stream_id)
    server.data_to_send()
    assert server.receive_data(frame(FrameType.DATA, 0, stream_id, b"late")) == []
    assert (
        frame(
            FrameType.RST_STREAM,
            0,
            stream_id,
            struct.pack("!I", ErrorCode.STREAM_CLOSED),
        )
        in server.data_to_send()
    )


def frame_types(wire: bytes | bytearray) -> list[int]:
    kinds, offset = [], 0
    while offset < len(wire):
        length_type, _, _ = struct.unpack_from("!IBI", wire, offset)
        kinds.append(length_type & 0xFF)
        offset += 9 + (length_type >> 8)
    return kinds


def test_a_long_header_block_spans_continuations() -> None:
    # Before the server's SETTINGS, frames are at most 16 KiB.
    client, server = H2Connection(client=True), H2Connection(client=False)
    client.data_to_send()
    server.receive_data(http2.PREFACE)
    stream_id = client.open_stream()
    fields = [*REQUEST, (b"x-long", b"v" * 40_000)]
    client.send_headers(stream_id, fields)
    out = client.data_to_send()
    assert frame_types(out) == [
        FrameType.HEADERS,
        FrameType.CONTINUATION,
        FrameType.CONTINUATION,
    ]
    assert server.receive_data(out) == [HeadersReceived(stream_id, fields, False)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + bytes(8), ErrorCode.PROTOCOL_ERROR),
        (http2.PREFACE + frame(FrameType.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
        (
            http2.PREFACE + frame(FrameType.PING, 0, 0, b"short"),
            ErrorCode.FRAME_SIZE_ERROR,
        ),
        (
            http2.PREFACE + struct.pack("!IBI", 2**20 << 8, 0, 1),
            ErrorCode.FRAME_SIZE_ERROR,
        ),
        (
            http2.PREFACE
            + frame(FrameType.HEADERS, 0, 1, b"\x82")  # no END_HEADERS
            + frame(FrameType.PING, 0, 0, bytes(8)),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            http2.PREFACE + frame(FrameType.HEADERS, 4, 1, b"\x80\x80"),
            ErrorCode.COMPRESSION_ERROR,
        ),
        (
            http2.PREFACE + frame(FrameType.WINDOW_UPDATE, 0, 0, bytes(4)),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            http2.PREFACE + frame(FrameType.PUSH_PROMISE, 4, 1, bytes(4)),
            ErrorCode.PROTOCOL_ERROR,
        ),
    ],
    ids=[
        "no-preface",
        "data-on-0",
        "short-ping",
        "huge-frame",
        "interrupted-headers",
        "bad-hpack",
        "zero-window-update",
        "push",
    ],
)
def test_broken_peers_end_the_connection_with_the_right_code(
    data: bytes, code: ErrorCode
) -> None:
    server = H2Connection(client=False)
    with pytest.raises(H2Error) as caught:
        server.receive_data(data)
    assert caught.value.code == code


def test_frames_split_anywhere_decode_the_same() -> None:
    client = H2Connection(client=True)
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    client.send_data(stream_id, b"payload" * 100)
    wire = client.data_to_send()
    whole = H2Connection(client=False).receive_data(wire)
    split = H2Connection(client=False)
    events = [e for i in range(len(wire)) for e in split.receive_data(wire[i : i + 1])]
    assert events == whole


def test_data_pieces_are_framed_as_one_payload() -> None:
    # Before the server's SETTINGS, frames are at most 16 KiB.
    client, server = H2Connection(client=True), H2Connection(client=False)
    server.receive_data(client.data_to_send())
    stream_id = client.open_stream()
    client.send_headers(stream_id, REQUEST)
    head, body = b"head!", bytes(range(256)) * 80  # 5 + 20 480 bytes
    client.send_data(stream_id, head, memoryview(body), end_stream=True)
    wire = client.data_to_send()
    assert frame_types(wire) == [FrameType.HEADERS, FrameType.DATA, FrameType.DATA]
    events = server.receive_data(wire)
    received = [e for e in events if isinstance(e, DataReceived)]
    assert [len(e.data) for e in received] == [16384, 5 + 20480 - 16384]
    assert b"".join(e.data for e in received) == head + body
    assert [e.end_stream for e in received] == [False, True]


def test_a_peer_that_never_reads_its_pings_answers_is_stopped() -> None:
    server = H2Connection(client=False)
    server.receive_data(http2.PREFACE)
    ping = frame(FrameType.PING, 0, 0, bytes(8))
    server.receive_data(ping * (http2.MAX_UNSENT_ANSWERS - 1))  # its SETTINGS ACK
    server.data_to_send()  # taken for sending: the count starts again
    server.receive_data(ping * http2.MAX_UNSENT_ANSWERS)
    with pytest.raises(H2Error) as caught:
        server.receive_data(ping)
    assert caught.value.code == ErrorCode.ENHANCE_YOUR_CALM


@given(
    st.lists(
        st.tuples(
            st.integers(0, 12),
            st.integers(0, 255),
            st.integers(0, 9),
            st.binary(max_size=64),
        ),
        max_size=20,
    )
)
def test_arbitrary_frames_give_events_or_an_h2_error_only(
    frames: list[tuple[int, int, int, bytes]],
) -> None:
    server = H2Connection(client=False)
    wire = http2.PREFACE + b"".join(
        frame(kind, flags, stream_id, payload)
        for kind, flags, stream_id, payload in frames
    )
    with contextlib.suppress(H2Error):
        server.receive_data(wire)
        server.data_to_send()


@given(st.binary(max_size=400))
def test_arbitrary_header_blocks_decode_or_fail_cleanly(block: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        hpack.Decoder().decode(block)


def test_our_pings_are_answered_as_events() -> None:
    client, server = connected()
    client.ping(b"keepaliv")
    assert exchange(client, server) == []
    assert exchange(server, client) == [http2.PingAnswered(b"keepaliv")]
