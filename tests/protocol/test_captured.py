"""Bytes captured from real peers on this project's test machine
(tests/vectors/captured.json): v2ray 4.34 and sing-box 1.14 clients' first
packets decode on the vtrio server, and their servers' responses decode on
the vtrio client. These settle the request side that spec appendix C lists
as self-computed only."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import pytest

from vtrio.config.model import Security, VMessUser
from vtrio.protocol.body import ChunkDecoder, Framing
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import Data, RequestHeader, ResponseHeader
from vtrio.protocol.header import AeadResponseSealer, response_key_iv
from vtrio.protocol.instruction import Command, Option, Request, SecurityType
from vtrio.protocol.validator import UserValidator

from .helpers import USER_ID

CAPTURED: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "captured.json").read_text("utf-8")
)
REQUESTS = CAPTURED["requests"]
RESPONSES = CAPTURED["responses"]
EXPECTED_REQUESTS = {
    "v2ray_4_34_aead_gcm": (SecurityType.AES_128_GCM, 0x0D, False),
    "v2ray_4_34_legacy_chacha": (SecurityType.CHACHA20_POLY1305, 0x0D, True),
    "sing_box_1_14_aead_chacha_authlen": (SecurityType.CHACHA20_POLY1305, 0x1D, False),
    "sing_box_1_14_legacy_cfb": (SecurityType.LEGACY, 0x01, True),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_real_client_first_packet_is_accepted(name: str) -> None:
    vector = REQUESTS[name]
    security, options, legacy = EXPECTED_REQUESTS[name]
    account = VMessUser(id=USER_ID, alter_id=4 if legacy else 0)
    now = vector["captured_at"][0]
    server = ServerConnection(
        UserValidator([account], now=now), now=now, random=random.Random(0).randbytes
    )
    server.receive_data(bytes.fromhex(vector["first_packet"]))
    assert server.next_event() == RequestHeader(
        user=account,
        command=Command.TCP,
        address="example.com",
        port=443,
        security=security,
        options=Option(options),
        legacy=legacy,
    )
    assert server.next_event() == Data(vector["payload"].encode())


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_real_server_response_opens_with_the_recorded_keys(name: str) -> None:
    vector = RESPONSES[name]
    request_key = bytes.fromhex(vector["request_key"])
    request_iv = bytes.fromhex(vector["request_iv"])
    key, iv = response_key_iv(request_key, request_iv, legacy=False)
    wire = bytes.fromhex(vector["response"])
    sealer = AeadResponseSealer(key, iv)
    length = sealer.open_length(wire[:18])
    header = sealer.open(wire[18 : 18 + length + 16])
    assert header[0] == vector["response_auth"]
    security = {
        "aes-128-gcm": SecurityType.AES_128_GCM,
        "chacha20-poly1305": SecurityType.CHACHA20_POLY1305,
    }[vector["security"]]
    # v2ray answers with Opt 0 in the header; the body follows the request's Opt.
    framing = Framing.of(security, Option(vector["options"]), datagram=False)
    decoder = ChunkDecoder(
        framing, key=key, iv=iv, request_key=request_key, request_iv=request_iv
    )
    decoder.feed(wire[18 + length + 16 :])
    assert decoder.next_payload() == vector["payload"].encode()


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_real_server_response_through_the_client_connection(name: str) -> None:
    vector = RESPONSES[name]
    account = VMessUser(
        id=USER_ID,
        security=Security(vector["security"]),
        experiments=frozenset(vector["experiments"]),
    )
    client = ClientConnection(
        account,
        Request(Command.TCP, ipaddress.IPv4Address("127.0.0.1"), vector["echo_port"]),
        now=vector["now"],
        random=random.Random(vector["seed"]).randbytes,
        machine="x86_64",
    )
    client.start(vector["payload"].encode())
    client.receive_data(bytes.fromhex(vector["response"]))
    assert client.next_event() == ResponseHeader(None)
    assert client.next_event() == Data(vector["payload"].encode())
