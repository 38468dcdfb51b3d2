"""The chunk codec on its own: every framing the Opt byte can ask for, limits,
counters, and what a broken or cut body does (spec 6)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol import body
from vtrio.protocol.body import (
    END,
    MAX_CHUNK_PAYLOAD,
    MAX_DATAGRAM,
    ChunkDecoder,
    ChunkEncoder,
    End,
    Framing,
)
from vtrio.protocol.instruction import Option, SecurityType

from .helpers import seeded_random, split

KEY = bytes(range(16))
IV = bytes(range(16, 32))
OTHER_KEY = bytes(range(32, 48))
OTHER_IV = bytes(range(48, 64))
BITS = [
    Option.CHUNK_STREAM,
    Option.CHUNK_MASKING,
    Option.GLOBAL_PADDING,
    Option.AUTHENTICATED_LENGTH,
]
ALL_OPTIONS = [
    Option(sum(combo))
    for n in range(len(BITS) + 1)
    for combo in itertools.combinations(BITS, n)
]


def framing_or_none(
    security: SecurityType, options: Option, datagram: bool
) -> Framing | None:
    try:
        return Framing.of(security, options, datagram=datagram)
    except RemoteProtocolError:
        assert Option.GLOBAL_PADDING in options
        assert Option.CHUNK_MASKING not in options
        return None


def codec(framing: Framing, seed: int = 0) -> tuple[ChunkEncoder, ChunkDecoder]:
    # A response direction: its own key and IV, the request's for AuthLength.
    return (
        ChunkEncoder(
            framing,
            random=seeded_random(seed),
            key=OTHER_KEY,
            iv=OTHER_IV,
            request_key=KEY,
            request_iv=IV,
        ),
        ChunkDecoder(
            framing, key=OTHER_KEY, iv=OTHER_IV, request_key=KEY, request_iv=IV
        ),
    )


def decode_all(
    decoder: ChunkDecoder, pieces: list[bytes], eof: bool, coalesce: bool = False
) -> list[bytes | End]:
    out: list[bytes | End] = []
    for piece in [*(p for p in pieces if p), *([b""] if eof else [])]:
        decoder.feed(piece)
        while (item := decoder.next_payload(coalesce=coalesce)) is not None:
            out.append(item)
            if item is END:
                return out
    return out


@settings(max_examples=300, deadline=None)
@given(
    security=st.sampled_from(list(SecurityType)),
    options=st.sampled_from(ALL_OPTIONS),
    datagram=st.booleans(),
    messages=st.lists(st.binary(min_size=1, max_size=20_000), max_size=4),
    cuts=st.lists(st.integers(0, 90_000), max_size=8),
    end_chunk=st.booleans(),
    coalesce=st.booleans(),
)
def test_every_framing_round_trips_at_every_split(
    security: SecurityType,
    options: Option,
    datagram: bool,
    messages: list[bytes],
    cuts: list[int],
    end_chunk: bool,
    coalesce: bool,
) -> None:
    framing = framing_or_none(security, options, datagram)
    if framing is None:
        return
    encoder, decoder = codec(framing)
    if datagram:
        messages = [m[:MAX_DATAGRAM] for m in messages]
        wire = b"".join(encoder.encode_datagram(m) for m in messages)
    else:
        wire = b"".join(encoder.encode_stream(m) for m in messages)
    end = encoder.encode_end() if end_chunk else b""
    assert (end == b"") is (not framing.chunked or not end_chunk)
    coalesce = coalesce and not datagram
    out = decode_all(decoder, list(split(wire + end, cuts)), not end, coalesce)
    assert out[-1] is END
    payloads = [item for item in out[:-1] if isinstance(item, bytes)]
    if datagram and framing.chunked:
        assert payloads == messages
    else:
        assert b"".join(payloads) == b"".join(messages)


@pytest.mark.parametrize("security", list(SecurityType))
def test_stream_chunks_stay_within_every_peers_limits(security: SecurityType) -> None:
    framing = Framing.of(security, Option(0x0D), datagram=False)
    encoder, decoder = codec(framing)
    data = bytes(range(256)) * 400  # 102400 bytes
    wire = encoder.encode_stream(data)
    decoder.feed(wire)
    payloads = []
    while (item := decoder.next_payload()) is not None:
        assert isinstance(item, bytes)
        payloads.append(item)
    assert b"".join(payloads) == data
    assert max(len(p) for p in payloads) == MAX_CHUNK_PAYLOAD
    assert len(payloads) == -(-len(data) // MAX_CHUNK_PAYLOAD)
    assert len(wire) - len(data) <= len(payloads) * (
        18 + 16 + 63
    )  # every chunk < 16384


def test_reader_takes_any_16_bit_size(monkeypatch: pytest.MonkeyPatch) -> None:
    framing = Framing.of(SecurityType.AES_128_GCM, Option(0x05), datagram=False)
    monkeypatch.setattr(body, "MAX_CHUNK_PAYLOAD", 0xFFFF - 16)
    encoder, decoder = codec(framing)
    data = b"z" * (0xFFFF - 16)
    decoder.feed(encoder.encode_stream(data))
    assert decoder.next_payload() == data


def test_nonce_counter_wraps_at_65536() -> None:
    framing = Framing.of(SecurityType.AES_128_GCM, Option.CHUNK_STREAM, datagram=False)
    wrapped, _ = codec(framing)
    fresh, _ = codec(framing)
    wrapped._count = 0xFFFF
    last_and_wrapped = wrapped.encode_stream(b"a") + wrapped.encode_stream(b"a")
    assert last_and_wrapped[len(last_and_wrapped) // 2 :] == fresh.encode_stream(b"a")
    assert last_and_wrapped[: len(last_and_wrapped) // 2] != fresh.encode_stream(b"a")


@pytest.mark.parametrize("security", [SecurityType.AES_128_GCM, SecurityType.LEGACY])
def test_corrupted_chunk_is_an_error(security: SecurityType) -> None:
    framing = Framing.of(security, Option.CHUNK_STREAM, datagram=False)
    encoder, decoder = codec(framing)
    wire = bytearray(encoder.encode_stream(b"some payload bytes"))
    wire[-3] ^= 0x01
    decoder.feed(bytes(wire))
    with pytest.raises(RemoteProtocolError, match=r"tag|checksum|MAC"):
        decoder.next_payload()


def test_coalescing_returns_good_chunks_before_a_bad_ones_error() -> None:
    framing = Framing.of(SecurityType.AES_128_GCM, Option(0x0D), datagram=False)
    encoder, decoder = codec(framing)
    good = encoder.encode_stream(b"a" * 20_000)  # two chunks
    bad = bytearray(encoder.encode_stream(b"b" * 100) + encoder.encode_end())
    bad[5] ^= 0x01
    decoder.feed(good + bad)
    assert decoder.next_payload(coalesce=True) == b"a" * 20_000
    with pytest.raises(RemoteProtocolError, match="tag"):
        decoder.next_payload(coalesce=True)


def test_coalescing_stops_at_the_end_chunk() -> None:
    framing = Framing.of(SecurityType.CHACHA20_POLY1305, Option(0x0D), datagram=False)
    encoder, decoder = codec(framing)
    wire = b"".join(
        (encoder.encode_stream(b"x" * 40_000), encoder.encode_end(), b"ignored")
    )
    decoder.feed(wire)
    assert decoder.next_payload(coalesce=True) == b"x" * 40_000
    assert decoder.next_payload(coalesce=True) is END
    assert decoder.buffered == 0


def test_eof_inside_a_chunk_is_an_error_at_every_cut() -> None:
    framing = Framing.of(SecurityType.CHACHA20_POLY1305, Option(0x1D), datagram=False)
    encoder, _ = codec(framing)
    wire = encoder.encode_stream(b"x" * 100)
    for cut in range(1, len(wire)):
        _, decoder = codec(framing)
        decoder.feed(wire[:cut])
        assert decoder.next_payload() is None
        decoder.feed(b"")
        with pytest.raises(RemoteProtocolError, match="EOF inside"):
            decoder.next_payload()


def test_size_below_overhead_is_an_error() -> None:
    framing = Framing.of(SecurityType.AES_128_GCM, Option.CHUNK_STREAM, datagram=False)
    _, decoder = codec(framing)
    decoder.feed(b"\x00\x05" + bytes(5))
    with pytest.raises(RemoteProtocolError, match="below its overhead"):
        decoder.next_payload()


def test_none_over_tcp_never_pads_but_udp_does() -> None:
    options = Option(0x0D)
    tcp = Framing.of(SecurityType.NONE, options, datagram=False)
    udp = Framing.of(SecurityType.NONE, options, datagram=True)
    assert (tcp.padding, udp.padding) == (False, True)
    encoder, _ = codec(tcp)
    assert len(encoder.encode_stream(b"abc")) == 2 + 3


def test_authenticated_length_turns_masking_off_and_seals_the_length() -> None:
    framing = Framing.of(SecurityType.AES_128_GCM, Option(0x1D), datagram=False)
    assert (framing.masking, framing.padding, framing.length_field) == (False, True, 18)
    # AuthenticatedLength is ignored for none, as v2ray does.
    assert not Framing.of(
        SecurityType.NONE, Option(0x15), datagram=False
    ).authenticated_length


@pytest.mark.parametrize("size", [0, MAX_DATAGRAM + 1])
def test_datagram_size_limits(size: int) -> None:
    encoder, _ = codec(
        Framing.of(SecurityType.AES_128_GCM, Option(0x0D), datagram=True)
    )
    with pytest.raises(LocalProtocolError):
        encoder.encode_datagram(b"d" * size)


def test_padding_without_masking_is_an_invalid_option() -> None:
    with pytest.raises(RemoteProtocolError, match="invalid option"):
        Framing.of(SecurityType.AES_128_GCM, Option(0x09), datagram=False)


@pytest.mark.parametrize("options", [Option(0x05), Option(0x0D), Option.CHUNK_STREAM])
def test_many_small_chunks_in_one_read_decode_in_order(options: Option) -> None:
    """v2ray writes ~2 KiB chunks: a 256 KiB read holds a hundred of them,
    opened in one pass, then decoding continues on the next read."""
    framing = Framing.of(SecurityType.AES_128_GCM, options, datagram=False)
    encoder, decoder = codec(framing)
    rng = random.Random(7)
    messages = [rng.randbytes(rng.randint(1, 2048)) for _ in range(300)]
    wire = b"".join(encoder.encode_stream(m) for m in messages)
    cut = len(wire) * 2 // 3  # inside some chunk
    decoder.feed(wire[:cut])
    first = decoder.next_payload(coalesce=True)
    assert isinstance(first, bytes)
    assert decoder.next_payload(coalesce=True) is None
    decoder.feed(wire[cut:] + encoder.encode_stream(b"tail") + encoder.encode_end())
    rest = decoder.next_payload(coalesce=True)
    assert isinstance(rest, bytes)
    assert first + rest == b"".join(messages) + b"tail"
    assert decoder.next_payload(coalesce=True) is END


@settings(max_examples=300, deadline=None)
@given(
    options=st.sampled_from([o for o in ALL_OPTIONS if Option.CHUNK_STREAM in o]),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=40),
    flips=st.lists(st.integers(0, 200_000), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 200_000), max_size=4),
)
def test_a_corrupted_stream_of_small_chunks_fails_only_as_a_protocol_error(
    options: Option, sizes: list[int], flips: list[int], cuts: list[int]
) -> None:
    """Whatever bytes an authenticated peer sends after its header, the
    decoder returns a prefix of what was sealed, then raises RemoteProtocolError
    (a flipped bit in a length may also leave it waiting for more)."""
    framing = framing_or_none(SecurityType.AES_128_GCM, options, datagram=False)
    if framing is None:
        return
    encoder, decoder = codec(framing)
    messages = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
    wire = bytearray(b"".join(encoder.encode_stream(m) for m in messages))
    for flip in flips:
        wire[flip % len(wire)] ^= 1 << (flip % 8)
    decoded = b""
    try:
        for piece in split(bytes(wire), cuts):
            decoder.feed(piece)
            while isinstance(item := decoder.next_payload(coalesce=True), bytes):
                decoded += item
    except RemoteProtocolError:
        pass
    assert b"".join(messages).startswith(decoded)
