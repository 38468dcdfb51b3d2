"""packetaddr datagram framing: exact bytes, round trips, typed failures."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import RemoteProtocolError
from vtrio.protocol.packetaddr import pack_datagram, unpack_datagram


def test_ipv4_layout_is_address_then_port() -> None:
    packed = pack_datagram(ipaddress.IPv4Address("1.2.3.4"), 53, b"q")
    assert packed == bytes.fromhex("01 01020304 0035") + b"q"


@given(
    address=st.ip_addresses(),
    port=st.integers(0, 65535),
    payload=st.binary(max_size=64),
)
def test_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, payload: bytes
) -> None:
    assert unpack_datagram(pack_datagram(address, port, payload)) == (
        address,
        port,
        payload,
    )


@pytest.mark.parametrize(
    "data", [b"", b"\x03" + bytes(8), b"\x01\x01\x02", b"\x02" + bytes(10)]
)
def test_bad_headers_are_typed_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        unpack_datagram(data)
