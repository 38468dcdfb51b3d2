"""The server's handshake decisions: who is let in, who is drained, who is
closed on, and why (spec 2.3, 2.4, 3.5, 3.6, 9)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.config.model import Security
from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.connection import ReceiveState, ServerConnection
from vtrio.protocol.events import (
    NEED_DATA,
    EndOfStream,
    Rejected,
    RequestHeader,
)
from vtrio.protocol.instruction import Command, Request, SecurityType
from vtrio.protocol.validator import UserValidator

from .helpers import (
    FIXED_NOW,
    OTHER_ID,
    drain,
    feed_all,
    pair,
    seeded_random,
    user,
)

TCP = Request(Command.TCP, "example.com", 443)


def first_packet(**kwargs: object) -> tuple[bytes, ServerConnection, UserValidator]:
    account = kwargs.pop("account", user())
    client, server, validator = pair(account, TCP, **kwargs)  # type: ignore[arg-type]
    return client.start(b"GET / HTTP/1.1\r\n\r\n"), server, validator


def accept(server: ServerConnection, wire: bytes) -> RequestHeader | Rejected:
    server.receive_data(wire)
    event = server.next_event()
    assert isinstance(event, (RequestHeader, Rejected))
    return event


def test_accepts_a_known_user_and_reports_the_request() -> None:
    wire, server, _ = first_packet()
    event = accept(server, wire)
    assert isinstance(event, RequestHeader)
    assert (event.command, event.address, event.port) == (
        Command.TCP,
        "example.com",
        443,
    )
    assert event.security is SecurityType.AES_128_GCM
    assert event.legacy is False
    assert server.receive_state is ReceiveState.BODY


@pytest.mark.parametrize("alter_id", [0, 4])
@pytest.mark.parametrize("security", [Security.AES_128_GCM, Security.AES_128_CFB])
def test_a_prepared_response_is_the_same_bytes(
    alter_id: int, security: Security
) -> None:
    """prepare_response moves work earlier; it must not change a byte."""
    wires = []
    for prepare in (False, True):
        wire, server, _ = first_packet(account=user(security, alter_id=alter_id))
        if prepare:
            server.prepare_response()  # before the request: nothing to key yet
        assert isinstance(accept(server, wire), RequestHeader)
        if prepare:
            server.prepare_response()
            server.prepare_response()
        wires.append(server.send_response() + server.send_data(b"HTTP/1.1 200"))
        server.prepare_response()  # after the response: no effect
        wires[-1] += server.send_data(b" OK") + server.send_eof()
    assert wires[0] == wires[1]
    assert len(wires[0]) > len(b"HTTP/1.1 200 OK")


def test_replayed_first_packet_is_drained() -> None:
    wire, server, validator = first_packet()
    assert isinstance(accept(server, wire), RequestHeader)
    again = ServerConnection(validator, now=FIXED_NOW, random=seeded_random(5))
    event = accept(again, wire)
    assert isinstance(event, Rejected)
    assert event.reason == "replayed auth ID"
    assert 0 < event.drain <= 3382 - len(wire)
    assert again.next_event() == event  # sticky


def test_replay_is_remembered_for_the_whole_window() -> None:
    wire, server, validator = first_packet()
    accept(server, wire)
    for later in (1, 60, 120):
        replay = ServerConnection(
            validator, now=FIXED_NOW + later, random=seeded_random()
        )
        event = accept(replay, wire)
        assert isinstance(event, Rejected)
        assert event.reason == "replayed auth ID"


def test_replay_of_an_auth_id_from_a_fast_clock_is_still_caught() -> None:
    # A client 120 s ahead: its EAuID stays in the window for 240 s of server
    # time. Other connections set the filter's rotation phase (at -119 and
    # +1 here); two 120 s generations would forget the EAuID by +121.
    account = user()
    validator = UserValidator([account], now=FIXED_NOW)

    def connect(client_now: int, server_now: int, seed: int) -> bytes:
        client, _, _ = pair(account, TCP, client_now=client_now, seed=seed)
        wire = client.start()
        server = ServerConnection(validator, now=server_now, random=seeded_random())
        assert isinstance(accept(server, wire), RequestHeader)
        return wire

    connect(FIXED_NOW - 119, FIXED_NOW - 119, seed=1)
    wire = connect(FIXED_NOW + 120, FIXED_NOW, seed=2)
    connect(FIXED_NOW + 1, FIXED_NOW + 1, seed=3)
    replay = ServerConnection(validator, now=FIXED_NOW + 121, random=seeded_random())
    event = accept(replay, wire)
    assert isinstance(event, Rejected)
    assert event.reason == "replayed auth ID"


@pytest.mark.parametrize("skew", [-120, 120])
def test_time_window_edges_accepted(skew: int) -> None:
    wire, server, _ = first_packet(client_now=FIXED_NOW + skew)
    assert isinstance(accept(server, wire), RequestHeader)


@pytest.mark.parametrize("skew", [-121, 121, -10_000])
def test_time_window_edges_rejected_with_the_skew_in_the_reason(skew: int) -> None:
    wire, server, _ = first_packet(client_now=FIXED_NOW + skew)
    event = accept(server, wire)
    assert isinstance(event, Rejected)
    assert event.reason == f"auth ID timestamp {skew:+d} s off"
    assert event.drain > 0


def test_the_scan_finds_the_right_user_among_several() -> None:
    wire, server, _ = first_packet(server_users=(user(user_id=OTHER_ID), user()))
    event = accept(server, wire)
    assert isinstance(event, RequestHeader)
    assert event.user == user()
    wire, server, _ = first_packet(server_users=(user(user_id=OTHER_ID),))
    event = accept(server, wire)
    assert isinstance(event, Rejected)
    assert event.reason == "unknown user"


def test_drain_is_stable_per_server_and_in_range() -> None:
    validator = UserValidator([user()], now=FIXED_NOW)
    sizes = {validator.drain_size(seeded_random(seed)) for seed in range(200)}
    assert all(54 <= size <= 3382 for size in sizes)
    assert max(sizes) - min(sizes) < 64  # one base, a small jitter
    other = UserValidator([user(user_id=OTHER_ID)], now=FIXED_NOW)
    assert {other.drain_size(seeded_random(seed)) for seed in range(200)} != sizes


def test_bad_header_tag_is_drained_and_counts_bytes_read() -> None:
    wire, server, _validator = first_packet()
    broken = bytearray(wire)
    broken[60] ^= 1  # inside the sealed instruction
    event = accept(server, bytes(broken))
    assert isinstance(event, Rejected)
    assert event.reason == "bad tag on the header"
    target = event.drain + len(broken)
    assert 54 <= target <= 3382


def test_bad_length_tag_is_drained() -> None:
    wire, server, _ = first_packet()
    broken = bytearray(wire)
    broken[20] ^= 0x80
    event = accept(server, bytes(broken))
    assert isinstance(event, Rejected)
    assert event.reason == "bad tag on the header length"


def test_unknown_16_bytes_are_drained_even_before_more_arrive() -> None:
    server = ServerConnection(
        UserValidator([user()], now=FIXED_NOW), now=FIXED_NOW, random=seeded_random()
    )
    event = accept(server, bytes(16))
    assert isinstance(event, Rejected)
    assert event.reason == "unknown user"
    assert event.drain > 0


@pytest.mark.parametrize("alter_id", [1, 4])
@pytest.mark.parametrize("skew", [-90, -30, 0, 29, 90])
@pytest.mark.parametrize("seed", range(4))
def test_legacy_header_hits_the_table_for_any_alter_id_and_jitter(
    alter_id: int, skew: int, seed: int
) -> None:
    account = user(alter_id=alter_id)
    wire, server, _ = first_packet(
        account=account, client_now=FIXED_NOW + skew, seed=seed
    )
    event = accept(server, wire)
    assert isinstance(event, RequestHeader)
    assert event.legacy is True
    assert event.user == account


def test_legacy_table_follows_the_clock() -> None:
    # The table is extended as `now` moves: a client 10 minutes later matches.
    account = user(alter_id=2)
    validator = UserValidator([account], now=FIXED_NOW)
    client, _, _ = pair(account, TCP, client_now=FIXED_NOW + 600)
    server = ServerConnection(validator, now=FIXED_NOW + 600, random=seeded_random())
    assert isinstance(accept(server, client.start(b"x")), RequestHeader)


def test_legacy_outside_the_window_is_unknown() -> None:
    account = user(alter_id=2)
    wire, server, _ = first_packet(account=account, client_now=FIXED_NOW + 151)
    event = accept(server, wire)
    assert isinstance(event, Rejected)
    assert event.reason == "unknown user"


def test_legacy_refused_when_aead_is_forced() -> None:
    wire, server, _ = first_packet(account=user(alter_id=2), aead_forced=True)
    event = accept(server, wire)
    assert isinstance(event, Rejected)
    assert event.reason == "legacy header refused in AEAD-only mode"
    assert event.drain > 0


def test_legacy_replay_taints_the_table_entry() -> None:
    account = user(alter_id=1)
    wire, server, validator = first_packet(account=account)
    assert isinstance(accept(server, wire), RequestHeader)
    replay = ServerConnection(validator, now=FIXED_NOW, random=seeded_random())
    first = accept(replay, wire)
    assert isinstance(first, Rejected)
    assert first.reason == "replayed session (legacy)"
    assert first.drain > 0
    # The burnt entry no longer matches at all.
    third = accept(
        ServerConnection(validator, now=FIXED_NOW, random=seeded_random()), wire
    )
    assert isinstance(third, Rejected)
    assert third.reason == "unknown user"


def test_aead_session_replay_with_a_fresh_auth_id_is_closed() -> None:
    # Same ReqKey/ReqIV under a new EAuID: the session history catches it.
    account = user()
    validator = UserValidator([account], now=FIXED_NOW)
    events = []
    for now in (FIXED_NOW, FIXED_NOW + 1):
        client, _, _ = pair(account, TCP, client_now=now, seed=7)
        server = ServerConnection(validator, now=now, random=seeded_random())
        events.append(accept(server, client.start()))
    assert isinstance(events[0], RequestHeader)
    assert events[1] == Rejected(0, "replayed session")


@pytest.mark.parametrize(
    ("security", "refused"),
    [
        (Security.NONE, True),
        (Security.ZERO, True),
        (Security.AES_128_CFB, True),
        (Security.AES_128_GCM, False),
        (Security.CHACHA20_POLY1305, False),
    ],
)
def test_disable_insecure_encryption(security: Security, refused: bool) -> None:
    wire, server, _ = first_packet(
        account=user(security), disable_insecure_encryption=True
    )
    event = accept(server, wire)
    if refused:
        assert isinstance(event, Rejected)
        assert event.drain == 0
        assert event.reason.startswith("insecure encryption refused")
    else:
        assert isinstance(event, RequestHeader)


def test_users_added_and_removed_at_run_time() -> None:
    validator = UserValidator([], now=FIXED_NOW)
    account = user(user_id=OTHER_ID, alter_id=1)
    validator.add(account, now=FIXED_NOW)
    client, _, _ = pair(account, TCP)
    wire = client.start(b"x")
    assert isinstance(
        accept(
            ServerConnection(validator, now=FIXED_NOW, random=seeded_random()), wire
        ),
        RequestHeader,
    )
    validator.remove(account.id)
    client, _, _ = pair(account, TCP, seed=3)
    event = accept(
        ServerConnection(validator, now=FIXED_NOW, random=seeded_random()),
        client.start(),
    )
    assert isinstance(event, Rejected)
    assert event.reason == "unknown user"
    assert validator.find_by_email("") is None


def test_truncation_at_every_position() -> None:
    # EOF in the header closes without a drain; EOF at a chunk boundary ends
    # the stream cleanly; EOF inside a chunk is an error.
    account = user()
    header = pair(account, TCP)[0].start()
    client, _, _ = pair(account, TCP)
    first = client.start(b"payload")
    wire = first + client.send_eof()
    boundaries = {len(header), len(first), len(wire)}
    for cut in range(len(wire) + 1):
        server = ServerConnection(
            UserValidator([account], now=FIXED_NOW),
            now=FIXED_NOW,
            random=seeded_random(),
        )
        before_eof = feed_all(server, [wire[:cut]])
        if cut < len(header):
            assert before_eof == []
            server.receive_data(b"")
            event = server.next_event()
            assert isinstance(event, Rejected)
            assert event.drain == 0
            assert event.reason.startswith("EOF in the")
            continue
        assert isinstance(before_eof[0], RequestHeader)
        if cut >= len(first) + 2:
            # Upstream readers stop at an end chunk's length field; so do we.
            assert isinstance(before_eof[-1], EndOfStream)
            continue
        server.receive_data(b"")
        if cut in boundaries:
            assert isinstance(drain(server)[-1], EndOfStream)
        else:
            with pytest.raises(RemoteProtocolError):
                drain(server)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(min_size=0, max_size=600), eof=st.booleans())
def test_random_bytes_give_only_rejections(data: bytes, eof: bool) -> None:
    server = ServerConnection(
        UserValidator([user(), user(user_id=OTHER_ID, alter_id=2)], now=FIXED_NOW),
        now=FIXED_NOW,
        random=seeded_random(),
    )
    events = feed_all(server, [data], eof=eof)
    assert all(isinstance(event, Rejected) for event in events)
    if len(data) >= 16 or eof:
        assert len(events) == 1


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 160), bit=st.integers(0, 7))
def test_flipped_bit_in_the_first_packet_is_rejected_or_fails_typed(
    position: int, bit: int
) -> None:
    account = user()
    client, server, _ = pair(account, TCP)
    wire = bytearray(client.start(b"x" * 40) + client.send_eof())
    position %= len(wire)
    wire[position] ^= 1 << bit
    try:
        events = feed_all(server, [bytes(wire)], eof=True)
    except RemoteProtocolError:
        assert position >= 16 + 18 + 8  # header tags guard everything before
        return
    assert events
    assert isinstance(events[0], Rejected)


def test_misuse_is_a_local_error() -> None:
    wire, server, _ = first_packet()
    with pytest.raises(LocalProtocolError):
        server.send_response()  # nothing accepted yet
    accept(server, wire)
    with pytest.raises(LocalProtocolError):
        server.send_data(b"x")  # response header first
    server.send_response()
    with pytest.raises(LocalProtocolError):
        server.send_response()
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
    assert server.next_event() is not NEED_DATA


def test_user_id_type() -> None:
    assert isinstance(user().id, uuid.UUID)


def test_bytes_after_a_rejection_are_counted_not_kept() -> None:
    server = ServerConnection(
        UserValidator([user()], now=FIXED_NOW), now=FIXED_NOW, random=seeded_random()
    )
    event = accept(server, bytes(100))
    assert isinstance(event, Rejected)
    for _ in range(100):
        server.receive_data(bytes(65536))
    assert len(server._buffer) == 0
    assert server.next_event() == event


def test_bytes_after_the_end_of_the_body_are_dropped() -> None:
    client, server, _ = pair(user(), TCP)
    feed_all(server, [client.start(b"x") + client.send_eof()])
    assert server.receive_state is ReceiveState.CLOSED
    for _ in range(100):
        server.receive_data(bytes(65536))
    assert server._decoder is not None
    assert server._decoder.buffered == 0
    assert isinstance(server.next_event(), EndOfStream)
