"""Property tests: whatever the client sends, the server decodes, and back,
for every security and option the client can choose, every address kind, TCP
and UDP, and every way the byte stream can be cut by the network."""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.config.model import Security
from vtrio.protocol.events import Datagram, EndOfStream, RequestHeader, ResponseHeader
from vtrio.protocol.header import AeadRequestSealer, AeadResponseSealer
from vtrio.protocol.instruction import Command, Request

from .helpers import FIXED_NOW, feed_all, pair, payload_of, split, user

if TYPE_CHECKING:
    from vtrio.protocol.address import Address
from vtrio.protocol.commands import SwitchAccount

EXPERIMENTS = st.sets(st.sampled_from(["AuthenticatedLength", "NoTerminationSignal"]))
ADDRESSES: st.SearchStrategy[Address] = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,3}", fullmatch=True),
)
STREAM_DATA = st.lists(st.binary(min_size=1, max_size=20_000), max_size=3)
DATAGRAMS = st.lists(st.binary(min_size=1, max_size=3000), max_size=4)
SPLITS = st.lists(st.integers(0, 80_000), max_size=6)
SWITCH = SwitchAccount(
    port=4433, id=uuid.UUID(int=7), alter_id=4, level=2, valid_minutes=9
)


def _unchunked(security: Security, command: Command) -> bool:
    return security is Security.ZERO and command is not Command.UDP


@settings(max_examples=150, deadline=None)
@given(
    security=st.sampled_from(list(Security)),
    alter_id=st.sampled_from([0, 0, 2]),
    experiments=EXPERIMENTS,
    command=st.sampled_from(list(Command)),
    address=ADDRESSES,
    port=st.integers(0, 65535),
    stream=STREAM_DATA,
    datagrams=DATAGRAMS,
    request_splits=SPLITS,
    response_splits=SPLITS,
    switch=st.booleans(),
    prepare=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_round_trip_both_directions(
    security: Security,
    alter_id: int,
    experiments: set[str],
    command: Command,
    address: Address,
    port: int,
    stream: list[bytes],
    datagrams: list[bytes],
    request_splits: list[int],
    response_splits: list[int],
    switch: bool,
    prepare: bool,
    seed: int,
) -> None:
    account = user(security, alter_id=alter_id, experiments=frozenset(experiments))
    request = (
        Request(Command.MUX)
        if command is Command.MUX
        else Request(command, address, port)
    )
    client, server, _ = pair(account, request, seed=seed)
    udp = command is Command.UDP
    messages = datagrams if udp else stream
    send_client = client.send_datagram if udp else client.send_data
    first = messages[0] if messages else b""
    wire = client.start(first) + b"".join(send_client(m) for m in messages[1:])
    wire += client.send_eof()
    # Without an end chunk only the transport EOF ends the direction.
    needs_eof = "NoTerminationSignal" in experiments or _unchunked(security, command)
    events = feed_all(server, split(wire, request_splits), eof=needs_eof)

    header = events[0]
    assert isinstance(header, RequestHeader)
    assert header.user == account
    assert header.command is command
    assert header.legacy is (alter_id > 0)
    if command is not Command.MUX:
        assert (header.address, header.port) == (address, port)
    assert isinstance(events[-1], EndOfStream)
    body = events[1:-1]
    if udp:
        assert [e.payload for e in body if isinstance(e, Datagram)] == messages
        assert len(body) == len(messages)
    else:
        assert payload_of(body) == b"".join(messages)

    if prepare:  # what a driver does while it waits: twice is harmless
        for side in (server, client, server, client):
            side.prepare_response()
    send_server = server.send_datagram if udp else server.send_data
    reply_command = SWITCH if switch else None
    reply = server.send_response(reply_command) + b"".join(
        send_server(m) for m in messages
    )
    reply += server.send_eof()
    events = feed_all(client, split(reply, response_splits), eof=needs_eof)
    assert events[0] == ResponseHeader(reply_command)
    assert isinstance(events[-1], EndOfStream)
    if udp:
        assert [e.payload for e in events[1:-1] if isinstance(e, Datagram)] == messages
    else:
        assert payload_of(events[1:-1]) == b"".join(messages)


@settings(max_examples=30, deadline=None)
@given(skew=st.integers(-120, 120), seed=st.integers(0, 2**32))
def test_aead_time_window_accepts_any_skew_up_to_120_seconds(
    skew: int, seed: int
) -> None:
    account = user()
    client, server, _ = pair(
        account,
        Request(Command.TCP, "example.com", 80),
        client_now=FIXED_NOW + skew,
        seed=seed,
    )
    assert isinstance(feed_all(server, [client.start(b"x")])[0], RequestHeader)


def test_a_tunnel_past_its_handshake_keeps_no_header_ciphers() -> None:
    """An idle tunnel holds its body coders only: the four header AEADs (of
    the request and of the response) are released on both sides."""
    client, server, _ = pair(user(), Request(Command.TCP, "example.com", 80))
    assert isinstance(feed_all(server, [client.start(b"ping")])[0], RequestHeader)
    server.prepare_response()
    reply = server.send_response() + server.send_data(b"pong")
    assert payload_of(feed_all(client, [reply])[1:]) == b"pong"
    for side in (client, server):
        held = [
            name
            for name, value in vars(side).items()
            if isinstance(value, AeadRequestSealer | AeadResponseSealer)
        ]
        assert held == [], f"{type(side).__name__} keeps {held}"
