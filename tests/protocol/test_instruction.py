"""The instruction and its addresses: layout, checks, and the bounds of the
legacy decoder's length oracle (spec 4)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.address import pack_address, parse_domain, unpack_address
from vtrio.protocol.instruction import (
    MAX_LENGTH,
    Command,
    Instruction,
    Option,
    Request,
    decode_instruction,
    fnv1a32,
    required_length,
)


def make(request: Request, padding: bytes = b"", security: int = 3) -> Instruction:
    return Instruction(
        iv=bytes(16),
        key=bytes(range(16)),
        response_auth=0x42,
        options=Option(0x0D),
        security=security,
        request=request,
        padding=padding,
    )


@pytest.mark.parametrize(
    ("address", "packed"),
    [
        (ipaddress.IPv4Address("1.2.3.4"), "0101020304"),
        (ipaddress.IPv6Address("::1"), "03" + "00" * 15 + "01"),
        ("example.com", "020b6578616d706c652e636f6d"),
    ],
)
def test_address_codes_are_vmess_not_socks(address: object, packed: str) -> None:
    assert pack_address(address).hex() == packed  # type: ignore[arg-type]
    assert unpack_address(bytes.fromhex(packed), 0) == (address, len(packed) // 2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"127.0.0.1", ipaddress.IPv4Address("127.0.0.1")),
        (b"[::1]", ipaddress.IPv6Address("::1")),
        (b"1password.com", "1password.com"),
        (b"a_b-c.example", "a_b-c.example"),
    ],
)
def test_domain_that_spells_an_ip_becomes_the_ip(raw: bytes, expected: object) -> None:
    assert parse_domain(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"exa mple.com", b"ex\x00.com", "é.com".encode()])
def test_invalid_domains_are_refused(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_domain(raw)


@pytest.mark.parametrize("domain", ["", "a" * 256, "é.com"])
def test_unsendable_domains_are_local_errors(domain: str) -> None:
    with pytest.raises(LocalProtocolError):
        pack_address(domain)


def test_mux_has_no_address_and_is_42_bytes() -> None:
    encoded = make(Request(Command.MUX)).encode()
    assert len(encoded) == 42
    assert decode_instruction(encoded) == make(Request(Command.MUX))


def test_longest_instruction_is_316_bytes() -> None:
    encoded = make(Request(Command.UDP, "a" * 255, 53), padding=bytes(15)).encode()
    assert len(encoded) == MAX_LENGTH
    assert decode_instruction(encoded).request == Request(Command.UDP, "a" * 255, 53)


def test_checksum_is_fnv1a_and_verified() -> None:
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    encoded = bytearray(make(Request(Command.TCP, "example.com", 80)).encode())
    encoded[-1] ^= 1
    with pytest.raises(RemoteProtocolError, match="checksum"):
        decode_instruction(bytes(encoded))


def _with_checksum(body: bytes) -> bytes:
    return body + fnv1a32(body).to_bytes(4)


def test_unknown_command_and_address_type_are_refused() -> None:
    mux = make(Request(Command.MUX)).encode()[:-4]
    with pytest.raises(RemoteProtocolError, match="unknown command"):
        decode_instruction(_with_checksum(mux[:37] + b"\x04"))
    tcp = make(Request(Command.TCP, ipaddress.IPv4Address("1.2.3.4"), 80)).encode()[:-4]
    with pytest.raises(RemoteProtocolError, match="unknown address type"):
        decode_instruction(_with_checksum(tcp[:40] + b"\x09" + tcp[41:]))


@given(
    request=st.one_of(
        st.just(Request(Command.MUX)),
        st.builds(
            Request,
            st.sampled_from([Command.TCP, Command.UDP]),
            st.one_of(
                st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
                st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
                st.from_regex(r"[a-z0-9._-]{1,255}", fullmatch=True).filter(
                    lambda d: not d[0].isdigit()
                ),
            ),
            st.integers(0, 65535),
        ),
    ),
    padding=st.binary(max_size=15),
)
def test_required_length_never_overshoots(request: Request, padding: bytes) -> None:
    # The legacy decoder decrypts only what this asks for, so it must reach
    # the exact length, growing monotonically, and never ask for more.
    encoded = make(request, padding).encode()
    previous = 0
    for size in range(len(encoded) + 1):
        need = required_length(encoded[:size])
        assert previous <= need <= len(encoded)
        previous = need
    assert required_length(encoded) == len(encoded)
    assert decode_instruction(encoded) == make(request, padding)
