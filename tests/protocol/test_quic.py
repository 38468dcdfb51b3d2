"""QUIC Initial sniffing: RFC 9001's sample packet, ClientHellos across
packets and datagrams, and what is not a QUIC client's first flight."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.test_sniff import hand_built_hello
from tests.support.quic import client_initial, crypto_frame
from vtrio.protocol.quic import (
    DRAFT_29,
    VERSION_2,
    client_crypto,
    initial_keys,
    sniff_quic,
)
from vtrio.protocol.sniff import MORE, Sniffed

# RFC 9001 Appendix A.2: the client's Initial for connection ID 8394c8f03e515708.
RFC_9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
# A ClientHello of about 1 700 bytes, as one with a post-quantum key share.
PADDING_EXTENSION = b"\x00\x15" + (1500).to_bytes(2) + bytes(1500)
LARGE_HELLO = hand_built_hello([(0, b"www.example.org")], before=PADDING_EXTENSION)[
    5:
]  # the handshake message, without its TLS record header


def test_the_rfc_sample_keys_and_server_name() -> None:
    key, iv, hp = initial_keys(1, bytes.fromhex("8394c8f03e515708"))
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    assert sniff_quic(RFC_9001_CLIENT_INITIAL) == Sniffed("quic", "example.com")
    hello = client_crypto(RFC_9001_CLIENT_INITIAL)
    assert hello[:4] == bytes.fromhex("010000ed")
    assert len(hello) == 4 + 0xED


def test_the_test_encoder_builds_the_rfc_sample_byte_for_byte() -> None:
    hello = client_crypto(RFC_9001_CLIENT_INITIAL)
    assert client_initial(crypto_frame(0, hello)) == RFC_9001_CLIENT_INITIAL


def split_hello(cut: int, *, first_half_first: bool = True) -> list[bytes]:
    """LARGE_HELLO in two Initial datagrams, cut at ``cut``."""
    head = client_initial(crypto_frame(0, LARGE_HELLO[:cut]), number=0)
    tail = client_initial(crypto_frame(cut, LARGE_HELLO[cut:]), number=1)
    return [head, tail] if first_half_first else [tail, head]


@pytest.mark.parametrize("first_half_first", [True, False])
def test_a_client_hello_in_two_datagrams_is_read_once_both_came(
    first_half_first: bool,
) -> None:
    first, second = split_hello(1000, first_half_first=first_half_first)
    assert sniff_quic(first) == MORE
    assert sniff_quic(first + second) == Sniffed("quic", "www.example.org")


def test_shuffled_crypto_frames_in_one_packet() -> None:
    # Chrome sends its ClientHello's pieces in random order, with PINGs and
    # PADDING between them.
    pieces = [
        (offset, LARGE_HELLO[offset : offset + 300]) for offset in range(0, 1100, 300)
    ]
    random.Random(5).shuffle(pieces)
    frames = b"\x01\x00\x00".join(crypto_frame(o, d) for o, d in pieces)
    rest = crypto_frame(1200, LARGE_HELLO[1200:])
    first = client_initial(frames, number=0, size=1400)
    assert sniff_quic(first) == MORE
    second = client_initial(rest, number=1)
    assert sniff_quic(first + second) == Sniffed("quic", "www.example.org")


def test_packets_coalesced_in_one_datagram_and_other_long_headers_skipped() -> None:
    head, tail = split_hello(900)
    sealed = bytes(range(100))  # a 0-RTT packet's protected number and payload
    zero_rtt = (
        b"\xd3\x00\x00\x00\x01\x08"
        + bytes.fromhex("8394c8f03e515708")
        + b"\x00"  # no source connection ID; 0-RTT has no token
        + (len(sealed) | 0x4000).to_bytes(2)
        + sealed
    )
    verdict = sniff_quic(head + zero_rtt + tail)
    assert verdict == Sniffed("quic", "www.example.org")


def test_the_rfc_9369_sample_packet_of_quic_v2() -> None:
    # RFC 9369 Appendix A.2 protects the same frames as RFC 9001's sample: its
    # header and the 16 bytes after it (the header protection sample) come
    # out only with v2's salt, labels and Initial type.
    hello = client_crypto(RFC_9001_CLIENT_INITIAL)
    packet = client_initial(crypto_frame(0, hello), version=VERSION_2)
    assert packet[:22].hex() == "d76b3343cf088394c8f03e5157080000449ea0c95e82"
    assert packet[22:38].hex() == "ffe67b6abcdb4298b485dd04de806071"
    assert sniff_quic(packet) == Sniffed("quic", "example.com")


def test_draft_29_initials() -> None:
    hello = client_crypto(RFC_9001_CLIENT_INITIAL)
    packet = client_initial(crypto_frame(0, hello), version=DRAFT_29)
    assert sniff_quic(packet) == Sniffed("quic", "example.com")


def test_a_client_hello_without_a_name_is_quic_with_nothing_to_give() -> None:
    nameless = hand_built_hello([])[5:]
    assert sniff_quic(client_initial(crypto_frame(0, nameless))) == Sniffed("quic", "")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(
            bytes.fromhex(
                "12340100000100000000000003777777076578616d706c6503636f6d0000010001"
            ),
            id="dns-query",
        ),
        pytest.param(b"\x40" + bytes(40), id="short-header"),
        pytest.param(
            b"\xc3\x6b\x33\x43\xcf" + RFC_9001_CLIENT_INITIAL[5:], id="v1-keys-as-v2"
        ),
        pytest.param(
            RFC_9001_CLIENT_INITIAL[:600] + b"\xff" + RFC_9001_CLIENT_INITIAL[601:],
            id="tampered",
        ),
        pytest.param(RFC_9001_CLIENT_INITIAL[:1100], id="cut-short"),
        pytest.param(client_initial(b"\x08" + bytes(20)), id="stream-frame"),
        pytest.param(
            client_initial(crypto_frame(0, b"\x02" + bytes(60))), id="server-hello"
        ),
    ],
)
def test_what_is_not_a_quic_client_hello(data: bytes) -> None:
    assert sniff_quic(data) is None


@given(st.binary(max_size=1300))
def test_any_bytes_get_a_verdict_and_never_an_exception(data: bytes) -> None:
    assert sniff_quic(data) in (None, MORE) or isinstance(sniff_quic(data), Sniffed)


@given(st.integers(0, len(RFC_9001_CLIENT_INITIAL) - 1), st.integers(0, 255))
def test_a_damaged_sample_packet_never_raises(at: int, value: int) -> None:
    damaged = bytearray(RFC_9001_CLIENT_INITIAL)
    damaged[at] = value
    verdict = sniff_quic(bytes(damaged))
    assert verdict in (None, MORE) or verdict == Sniffed("quic", "example.com")
