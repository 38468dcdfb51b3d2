"""SNTP messages: the client packet, and the offset from a server's reply."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import sntp

NONCE = bytes(range(1, 9))


def reply(
    nonce: bytes, received: float, sent: float, *, head: int = 0x24, stratum: int = 2
) -> bytes:
    return (
        bytes((head, stratum, 6, 0xEC))
        + bytes(20)
        + nonce
        + sntp.ntp_timestamp(received)
        + sntp.ntp_timestamp(sent)
    )


def test_request_is_a_version_4_client_packet_carrying_the_nonce() -> None:
    packet = sntp.request(NONCE)
    assert len(packet) == 48
    assert packet[0] == 0x23  # leap 0, version 4, mode 3
    assert packet[1:40] == bytes(39)
    assert packet[40:] == NONCE


@given(
    offset=st.floats(-1e6, 1e6),
    start=st.floats(1.5e9, 2.0e9),
    delay=st.floats(0, 2),
    work=st.floats(0, 0.5),
)
def test_offset_of_a_symmetric_exchange(
    offset: float, start: float, delay: float, work: float
) -> None:
    server_received = start + delay + offset
    server_sent = server_received + work
    received = start + 2 * delay + work
    found = sntp.clock_offset(
        reply(NONCE, server_received, server_sent), NONCE, start, received
    )
    assert found == pytest.approx(offset, abs=1e-6)


def test_timestamps_after_2036_are_in_era_1() -> None:
    after = 2_085_978_496 + 100.25  # 2036-02-07 06:28:16 UTC + 100.25 s
    found = sntp.clock_offset(reply(NONCE, after, after), NONCE, after, after)
    assert found == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(
    ("packet", "fragment"),
    [
        (reply(NONCE, 0, 0)[:47], "47 bytes"),
        (reply(NONCE, 2e9, 2e9, head=0x23), "mode 3"),
        (reply(NONCE, 2e9, 2e9, stratum=0), "not synchronised"),
        (reply(NONCE, 2e9, 2e9, head=0xE4), "not synchronised"),
        (reply(os.urandom(8), 2e9, 2e9), "does not answer"),
    ],
)
def test_replies_that_do_not_answer_or_cannot_be_trusted_are_refused(
    packet: bytes, fragment: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment):
        sntp.clock_offset(packet, NONCE, 2e9, 2e9)
