"""Mux.Cool / XUDP frame codec: wire vectors, round trips at every split, bad input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.events import NEED_DATA
from vtrio.protocol.mux import (
    MAX_FRAME_SIZE,
    MAX_STREAM_FRAME_DATA,
    Frame,
    MuxDecoder,
    Network,
    Status,
    encode_frame,
    stream_frames,
)

V4 = ipaddress.IPv4Address("127.0.0.1")
V6 = ipaddress.IPv6Address("::1")

# (frame, wire bytes) written out by hand from spec section 7.
VECTORS = [
    (
        Frame(1, Status.NEW, b"hi", network=Network.TCP, address=V4, port=80),
        bytes.fromhex("000c 0001 01 01 01 0050 01 7f000001 0002") + b"hi",
    ),
    (
        Frame(7, Status.NEW, network=Network.TCP, address="example.com", port=443),
        bytes.fromhex("0014 0007 01 00 01 01bb 02 0b") + b"example.com",
    ),
    (Frame(1, Status.KEEP, b"abc"), bytes.fromhex("0004 0001 02 01 0003") + b"abc"),
    (Frame(1, Status.END), bytes.fromhex("0004 0001 03 00")),
    (Frame(2, Status.END, error=True), bytes.fromhex("0004 0002 03 02")),
    (Frame(0, Status.KEEP_ALIVE), bytes.fromhex("0004 0000 04 00")),
    # XUDP New as Xray writes it: UDP, destination, then the 8-byte GlobalID.
    (
        Frame(
            0,
            Status.NEW,
            b"q",
            network=Network.UDP,
            address=V4,
            port=53,
            global_id=bytes(range(1, 9)),
        ),
        bytes.fromhex("0014 0000 01 01 02 0035 01 7f000001 0102030405060708 0001")
        + b"q",
    ),
    # XUDP Keep with a per-packet IPv6 address (sing-box's xudp layout).
    (
        Frame(0, Status.KEEP, b"zz", network=Network.UDP, address=V6, port=5353),
        bytes.fromhex("0018 0000 02 01 02 14e9 03") + V6.packed + b"\x00\x02zz",
    ),
]


@pytest.mark.parametrize(("frame", "wire"), VECTORS)
def test_vectors_encode_and_decode(frame: Frame, wire: bytes) -> None:
    assert encode_frame(frame) == wire
    decoder = MuxDecoder()
    decoder.receive_data(wire)
    assert decoder.next_frame() == frame
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 0


def test_sing_box_new_without_global_id_and_zero_length_data() -> None:
    wire = bytes.fromhex("000c 0000 01 01 02 0035 01 7f000001 0000")
    decoder = MuxDecoder()
    decoder.receive_data(wire)
    assert decoder.next_frame() == Frame(
        0, Status.NEW, b"", network=Network.UDP, address=V4, port=53
    )


def test_extra_of_end_and_plain_keep_is_ignored() -> None:
    decoder = MuxDecoder()
    decoder.receive_data(bytes.fromhex("0006 0003 03 00 ffff 0005 0003 02 00 01"))
    assert decoder.next_frame() == Frame(3, Status.END)
    assert decoder.next_frame() == Frame(3, Status.KEEP)


def test_stream_frames_split_at_8_kib() -> None:
    data = bytes(range(256)) * 70  # 17920 bytes: 8192 + 8192 + 1536
    frames = stream_frames(9, data)
    decoder = MuxDecoder()
    decoder.receive_data(b"".join(frames))
    decoded = []
    while (frame := decoder.next_frame()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        decoded.append(frame)
    assert [len(f.data or b"") for f in decoded] == [8192, 8192, 1536]
    assert b"".join(f.data or b"" for f in decoded) == data
    assert {(f.session_id, f.status) for f in decoded} == {(9, Status.KEEP)}
    assert stream_frames(9, b"") == []
    assert max(len(f) for f in frames) == 2 + 4 + 2 + MAX_STREAM_FRAME_DATA


def test_eof_between_frames_is_clean_and_inside_a_frame_is_an_error() -> None:
    decoder = MuxDecoder()
    decoder.receive_data(bytes.fromhex("0004 0001 03 00"))
    decoder.receive_data(b"")
    assert decoder.next_frame() == Frame(1, Status.END)
    assert decoder.next_frame() is None
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")

    truncated = MuxDecoder()
    truncated.receive_data(bytes.fromhex("0004 0001 02 01 0005") + b"abc")
    truncated.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        truncated.next_frame()


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes.fromhex("0201"), "513 > 512"),
        (bytes.fromhex("0003 000101"), "too short"),
        (bytes.fromhex("0004 0001 09 00"), "unknown mux frame status 9"),
        (bytes.fromhex("0009 0001 01 00 03 0050 01 7f00"), "unknown mux network 3"),
        (bytes.fromhex("0006 0001 01 00 01 00"), "truncated"),
        (bytes.fromhex("0009 0001 01 00 01 0050 07 7f00"), "unknown address type"),
        (bytes.fromhex("000a 0001 01 00 01 0050 02 05 ab"), "past the end"),
    ],
)
def test_bad_metadata_raises_remote_protocol_error(wire: bytes, message: str) -> None:
    decoder = MuxDecoder()
    decoder.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=message):
        decoder.next_frame()


def test_bad_metadata_fails_before_its_data_arrives() -> None:
    decoder = MuxDecoder()
    # Data option set with a 65535-byte length, but the status is invalid.
    decoder.receive_data(bytes.fromhex("0004 0001 66 01 ffff"))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "frame",
    [
        Frame(1, Status.NEW),
        Frame(0x10000, Status.KEEP),
        Frame(1, Status.KEEP, network=Network.TCP, address=V4, port=1),
        Frame(1, Status.END, network=Network.UDP, address=V4, port=1),
        Frame(1, Status.KEEP, global_id=bytes(8)),
        Frame(1, Status.NEW, network=Network.TCP, address=V4, global_id=bytes(8)),
        Frame(1, Status.NEW, network=Network.UDP, address=V4, global_id=b"short"),
        Frame(1, Status.NEW, network=Network.UDP, address=V4, port=70000),
        Frame(1, Status.KEEP, b"x" * 65536),
        Frame(1, Status.NEW, network=Network.TCP, address="a" * 256),
    ],
)
def test_encoding_invalid_frames_raises_local_protocol_error(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(frame)


addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|net|arpa)", fullmatch=True),
)
payloads = st.one_of(st.none(), st.binary(max_size=300))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    session_id = draw(st.integers(0, 0xFFFF))
    status = draw(st.sampled_from(Status))
    data = draw(payloads)
    error = draw(st.booleans())
    if status is Status.NEW:
        network = draw(st.sampled_from(Network))
        global_id = None
        if network is Network.UDP:
            global_id = draw(st.one_of(st.none(), st.binary(min_size=8, max_size=8)))
        return Frame(
            session_id,
            status,
            data,
            error,
            network,
            draw(addresses),
            draw(st.integers(0, 0xFFFF)),
            global_id,
        )
    if status is Status.KEEP and draw(st.booleans()):
        address = draw(addresses)
        port = draw(st.integers(0, 0xFFFF))
        return Frame(session_id, status, data, error, Network.UDP, address, port)
    return Frame(session_id, status, data, error)


@given(st.lists(frames(), max_size=6), st.data())
def test_round_trip_at_any_split(batch: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(frame) for frame in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = MuxDecoder()
    decoded: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if start == end:
            continue  # b"" would mean EOF
        decoder.receive_data(wire[start:end])
        while (frame := decoder.next_frame()) is not NEED_DATA:
            assert isinstance(frame, Frame)
            decoded.append(frame)
    decoder.receive_data(b"")
    assert decoder.next_frame() is None
    assert decoded == batch


@given(st.binary(min_size=1, max_size=2000))
def test_random_bytes_raise_only_remote_protocol_error(garbage: bytes) -> None:
    decoder = MuxDecoder()
    decoder.receive_data(garbage)
    decoder.receive_data(b"")
    try:
        while decoder.next_frame() is not None:
            assert decoder.buffered <= MAX_FRAME_SIZE
    except RemoteProtocolError:
        pass
