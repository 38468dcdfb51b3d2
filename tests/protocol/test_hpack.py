"""HPACK against RFC 7541's own examples (Appendix C) and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import hpack

REQUEST_1 = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"www.example.com"),
]
REQUEST_2 = [*REQUEST_1, (b"cache-control", b"no-cache")]
REQUEST_3 = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html"),
    (b":authority", b"www.example.com"),
    (b"custom-key", b"custom-value"),
]


@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param(  # C.3: literals, with the dynamic table
            [
                "828684410f7777772e6578616d706c652e636f6d",
                "828684be58086e6f2d6361636865",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ],
            id="C.3",
        ),
        pytest.param(  # C.4: the same requests Huffman-coded
            [
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684be5886a8eb10649cbf",
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            ],
            id="C.4",
        ),
    ],
)
def test_rfc_request_examples_decode_in_sequence(blocks: list[str]) -> None:
    decoder = hpack.Decoder()
    decoded = [decoder.decode(bytes.fromhex(block)) for block in blocks]
    assert decoded == [REQUEST_1, REQUEST_2, REQUEST_3]


@pytest.mark.parametrize(
    ("text", "coded"),
    [
        (b"www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
        (b"no-cache", "a8eb10649cbf"),
        (b"302", "6402"),
        (b"private", "aec3771a4b"),
        (
            b"Mon, 21 Oct 2013 20:13:21 GMT",
            "d07abe941054d444a8200595040b8166e082a62d1bff",
        ),
        (b"https://www.example.com", "9d29ad171863c78f0b97c8e9ae82ae43d3"),
    ],
)
def test_huffman_matches_the_rfc(text: bytes, coded: str) -> None:
    assert hpack.huffman_encode(text).hex() == coded
    assert hpack.huffman_decode(bytes.fromhex(coded)) == text


def test_the_huffman_code_is_complete_and_the_rfcs() -> None:
    lengths = hpack._CODE_LENGTHS
    assert len(lengths) == 257
    assert sum(2 ** (30 - length) for length in lengths) == 2**30  # Kraft: complete
    codes = hpack.HUFFMAN_CODES
    assert (codes[0], codes[ord("a")], codes[255], codes[hpack.EOS]) == (
        0x1FF8,
        0x3,
        0x3FFFFEE,
        0x3FFFFFFF,
    )


@given(st.binary(max_size=300))
def test_huffman_round_trip(data: bytes) -> None:
    assert hpack.huffman_decode(hpack.huffman_encode(data)) == data


@pytest.mark.parametrize(
    "coded",
    [
        "ff",  # a whole byte of padding
        "00",  # '0' (00000), then padding of 0s
        "fe",  # 8 bits that are no whole code: too long for padding
        "fffffffc",  # EOS inside the string
    ],
)
def test_bad_huffman_is_refused(coded: str) -> None:
    with pytest.raises(RemoteProtocolError):
        hpack.huffman_decode(bytes.fromhex(coded))


headers = st.lists(
    st.tuples(
        st.sampled_from([b":path", b"content-type", b"x-custom", b"te", b":status"])
        | st.binary(min_size=1, max_size=20),
        st.binary(max_size=100),
    ),
    max_size=12,
)


@given(headers)
def test_encoded_blocks_decode_to_the_same_list(fields: list[hpack.Header]) -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(hpack.encode(fields)) == fields
    assert decoder.decode(hpack.encode(fields)) == fields  # no table state left


@given(st.integers(0, 2**28), st.integers(1, 8))
def test_integers_round_trip(value: int, prefix: int) -> None:
    encoded = hpack.encode_integer(value, prefix)
    decoded, end = hpack._decode_integer(memoryview(encoded), 0, prefix)
    assert (decoded, end) == (value, len(encoded))


def test_dynamic_table_evicts_and_size_updates_apply() -> None:
    decoder = hpack.Decoder()
    # Literal with indexing, new name "a" = 40 bytes of value: 73 bytes each.
    entry = bytes((0x40, 1)) + b"a" + bytes((40,)) + b"v" * 40
    for _ in range(60):
        decoder.decode(entry)
    assert decoder._size <= hpack.DEFAULT_TABLE_SIZE
    assert decoder.decode(bytes((0x80 | 62,))) == [(b"a", b"v" * 40)]
    decoder.decode(bytes((0x20,)))  # size update to 0: the table empties
    with pytest.raises(RemoteProtocolError, match="no table entry"):
        decoder.decode(bytes((0x80 | 62,)))


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (bytes((0x80 | 70,)), "no table entry"),
        (bytes((0x00, 5)) + b"ab", "truncated string"),
        (bytes((0x3F, 0xE2, 0x1F)), "table size update"),  # 4097: above ours
        (bytes((0x82, 0x20)), "table size update"),  # not at the start
        (bytes((0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)), "integer"),
    ],
)
def test_malformed_blocks_are_refused(block: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        hpack.Decoder().decode(block)


def test_a_header_bomb_is_refused() -> None:
    field = bytes((0x00, 1)) + b"x" + hpack.encode_integer(4000, 7) + b"y" * 4000
    with pytest.raises(RemoteProtocolError, match="too large"):
        hpack.Decoder().decode(field * 20)
