"""The client: what it sends for each configured security, and how it reads
the response header (spec 4.2, 4.3, 5)."""

from __future__ import annotations

import uuid

import pytest

from vtrio.config.model import Security
from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.ciphers import aes_128_cfb
from vtrio.protocol.commands import SwitchAccount, decode_command, encode_command
from vtrio.protocol.connection import ClientConnection, client_security
from vtrio.protocol.events import (
    NEED_DATA,
    Data,
    EndOfStream,
    RequestHeader,
    ResponseHeader,
)
from vtrio.protocol.header import AeadResponseSealer, encode_response, response_key_iv
from vtrio.protocol.ids import auto_security
from vtrio.protocol.instruction import Command, Option, Request, SecurityType

from .helpers import FIXED_NOW, OTHER_ID, drain, feed_all, pair, seeded_random, user

TCP = Request(Command.TCP, "example.com", 443)
SWITCH = SwitchAccount(port=10_001, id=OTHER_ID, alter_id=0, level=1, valid_minutes=5)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", SecurityType.AES_128_GCM),
        ("AMD64", SecurityType.AES_128_GCM),
        ("aarch64", SecurityType.AES_128_GCM),
        ("s390x", SecurityType.AES_128_GCM),
        ("armv7l", SecurityType.CHACHA20_POLY1305),
        ("riscv64", SecurityType.CHACHA20_POLY1305),
    ],
)
def test_auto_follows_the_architecture(machine: str, expected: SecurityType) -> None:
    assert auto_security(machine) is expected


@pytest.mark.parametrize(
    ("security", "command", "experiments", "wire", "options"),
    [
        (Security.AES_128_GCM, Command.TCP, (), SecurityType.AES_128_GCM, 0x0D),
        (Security.CHACHA20_POLY1305, Command.TCP, ("AuthenticatedLength",), 4, 0x1D),
        (Security.NONE, Command.TCP, (), SecurityType.NONE, 0x05),
        (Security.ZERO, Command.TCP, ("AuthenticatedLength",), SecurityType.NONE, 0x00),
        (Security.ZERO, Command.UDP, (), SecurityType.NONE, 0x01),
        (Security.AES_128_CFB, Command.TCP, (), SecurityType.LEGACY, 0x01),
    ],
)
def test_client_security_and_options_match_upstream_clients(
    security: Security,
    command: Command,
    experiments: tuple[str, ...],
    wire: int,
    options: int,
) -> None:
    account = user(security, experiments=frozenset(experiments))
    assert client_security(account, command, machine="x86_64") == (
        wire,
        Option(options),
    )


def test_first_write_is_header_and_payload_over_100_bytes() -> None:
    # sing-box closes when its first read is under 100 bytes.
    client, server, _ = pair(user(), Request(Command.MUX))
    first = client.start(b"")
    assert len(first) >= 100
    server.receive_data(first)
    assert isinstance(server.next_event(), RequestHeader)


def test_switch_account_travels_in_the_response_header() -> None:
    client, server, _ = pair(user(), TCP)
    feed_all(server, [client.start(b"hi")])
    reply = server.send_response(SWITCH) + server.send_data(b"there")
    events = feed_all(client, [reply])
    assert events == [ResponseHeader(SWITCH), Data(b"there")]


def test_switch_account_codec() -> None:
    code, data = encode_command(SWITCH)
    assert decode_command(code, data) == SWITCH
    assert decode_command(code, data[:-1]) is None  # FNV no longer fits
    broken = bytearray(data)
    broken[10] ^= 1
    assert decode_command(code, bytes(broken)) is None
    assert decode_command(0x7F, data) is None  # unknown command: skipped
    assert decode_command(code, data[:4]) is None
    named = SwitchAccount(port=1, id=uuid.UUID(int=1), host="vmess.example.com")
    assert decode_command(*encode_command(named)) == named


@pytest.mark.parametrize("alter_id", [0, 2])
@pytest.mark.parametrize("security", [Security.AES_128_CFB, Security.AES_128_GCM])
def test_response_with_command_in_both_header_modes(
    alter_id: int, security: Security
) -> None:
    # Legacy header + legacy security: the header's CFB stream runs on into
    # the body (spec 5.3); the command bytes must not desynchronise it.
    client, server, _ = pair(user(security, alter_id=alter_id), TCP)
    feed_all(server, [client.start(b"hi")])
    reply = (
        server.send_response(SWITCH) + server.send_data(b"x" * 5000) + server.send_eof()
    )
    for cut in (1, 3, 4, 5, 20, 40):
        client, server, _ = pair(user(security, alter_id=alter_id), TCP)
        feed_all(server, [client.start(b"hi")])
        reply = (
            server.send_response(SWITCH)
            + server.send_data(b"x" * 5000)
            + server.send_eof()
        )
        events = feed_all(client, [reply[:cut], reply[cut:]])
        assert events[0] == ResponseHeader(SWITCH)
        assert b"".join(e.data for e in events if isinstance(e, Data)) == b"x" * 5000
        assert isinstance(events[-1], EndOfStream)


@pytest.mark.parametrize("legacy", [False, True])
def test_response_auth_mismatch_is_an_error(legacy: bool) -> None:
    client, _, _ = pair(user(alter_id=2 if legacy else 0), TCP)
    client.start()
    sent = client._instruction
    assert sent is not None
    key, iv = response_key_iv(sent.key, sent.iv, legacy=legacy)
    wrong = encode_response(sent.response_auth ^ 0x01, None)
    if legacy:
        client.receive_data(aes_128_cfb(key, iv).encrypt(wrong))
    else:
        client.receive_data(AeadResponseSealer(key, iv).seal(wrong))
    with pytest.raises(RemoteProtocolError, match="does not match"):
        client.next_event()


def test_response_truncated_at_every_position() -> None:
    account = user()
    client, server, _ = pair(account, TCP)
    feed_all(server, [client.start()])
    header = server.send_response()
    body = server.send_data(b"abc")
    reply = header + body + server.send_eof()
    for cut in range(len(reply)):
        client, server, _ = pair(account, TCP)
        feed_all(server, [client.start()])
        events = feed_all(client, [reply[:cut]])
        client.receive_data(b"")
        if cut < len(header):
            assert events == []
            with pytest.raises(RemoteProtocolError, match="EOF before the response"):
                client.next_event()
        elif (
            cut in (len(header), len(header) + len(body))
            or cut >= len(header) + len(body) + 2
        ):
            assert isinstance([*events, *drain(client)][-1], EndOfStream)
        else:
            with pytest.raises(RemoteProtocolError, match="EOF inside"):
                drain(client)


def test_client_misuse() -> None:
    client = ClientConnection(
        user(), TCP, now=FIXED_NOW, random=seeded_random(), machine="x86_64"
    )
    with pytest.raises(LocalProtocolError):
        client.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        client.next_event()
    client.start()
    with pytest.raises(LocalProtocolError):
        client.start()
    with pytest.raises(LocalProtocolError):
        client.send_datagram(b"x")  # a TCP connection
    assert client.next_event() is NEED_DATA
    client.send_eof()
    with pytest.raises(LocalProtocolError):
        client.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        Request(Command.TCP)


@pytest.mark.parametrize("alter_id", [0, 4], ids=["aead", "legacy"])
def test_a_header_sealed_ahead_is_the_one_start_sends(alter_id: int) -> None:
    account = user(alter_id=alter_id)

    def client() -> ClientConnection:
        return ClientConnection(
            account, TCP, now=FIXED_NOW, random=seeded_random(3), machine="x86_64"
        )

    ahead, on_demand = client(), client()
    ahead.seal_header()
    ahead.seal_header()  # idempotent: the same header, no new randomness
    wire = ahead.start(b"first payload")
    assert wire == on_demand.start(b"first payload")
    with pytest.raises(LocalProtocolError, match="already"):
        ahead.seal_header()
    _, server, _ = pair(account, TCP)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, RequestHeader)
    assert request.address == "example.com"
    assert server.next_event() == Data(b"first payload")
