"""The failure branches of a VMess handshake, as first packets (spec 9.2).

Theory of operation: each branch is a function that builds the exact bytes a
hostile or broken client would send to a server knowing ``KNOWN`` (AEAD) and
``LEGACY`` (alterId 4). The same table drives the sans-IO checks and the wire
checks, so a branch proven on the state machine is also proven through the
runtime. ``drains`` is spec 9.2's verdict: a drain branch keeps reading until
the per-server byte count or the handshake deadline; the others close at
once. No branch may ever get a byte back.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from vtrio.config import model
from vtrio.protocol.auth_id import auth_id_key, make_auth_id
from vtrio.protocol.ciphers import aes_128_ecb
from vtrio.protocol.connection import ClientConnection
from vtrio.protocol.header import AeadRequestSealer
from vtrio.protocol.ids import cmd_key
from vtrio.protocol.instruction import (
    Command,
    Instruction,
    Option,
    Request,
    SecurityType,
)

KNOWN = model.VMessUser(
    id=uuid.UUID("6d6e0c8a-5a0b-4a36-9a3e-0e5f2a7b9c11"),
    security=model.Security.AES_128_GCM,
)
LEGACY = model.VMessUser(
    id=uuid.UUID("0f7d1f8e-2b45-4f0e-8e0c-7a1b3c5d7e9f"),
    alter_id=4,
    security=model.Security.CHACHA20_POLY1305,
)
STRANGER = model.VMessUser(
    id=uuid.UUID("c3a1e2d4-9b8f-4e6a-8d2c-1f0e3b5a7c9d"),
    security=model.Security.AES_128_GCM,
)
SERVER_USERS = (KNOWN, LEGACY)
SKEW_SECONDS = 300
TLS_CLIENT_HELLO_PREFIX = bytes.fromhex("160301020001000200000303") + bytes(32)
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: probe\r\n\r\n"


def destination(port: int) -> Request:
    """TCP to the loopback target; a failed branch must never get there."""
    return Request(Command.TCP, ipaddress.IPv4Address("127.0.0.1"), port)


def first_packet(
    account: model.VMessUser,
    now: int,
    port: int,
    *,
    random: Callable[[int], bytes] = os.urandom,
    payload: bytes = b"probe",
) -> bytes:
    """What a real vtrio client would send first."""
    client = ClientConnection(
        account, destination(port), now=now, random=random, machine="x86_64"
    )
    return client.start(payload)


def _sealed(now: int, port: int, security: int, *, bad_checksum: bool = False) -> bytes:
    """An AEAD header for KNOWN whose instruction says what a test wants."""
    plain = Instruction(
        iv=os.urandom(16),
        key=os.urandom(16),
        response_auth=7,
        options=Option.CHUNK_STREAM | Option.CHUNK_MASKING,
        security=security,
        request=destination(port),
    ).encode()
    if bad_checksum:
        plain = plain[:-4] + struct.pack(">I", int.from_bytes(plain[-4:]) ^ 1)
    key = cmd_key(KNOWN.id)
    auth_id = make_auth_id(aes_128_ecb(auth_id_key(key)), now, os.urandom)
    return AeadRequestSealer(key, auth_id, os.urandom(8)).seal(plain)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes((data[index] ^ 0x40,)) + data[index + 1 :]


@dataclass(frozen=True, slots=True)
class Branch:
    """One way a handshake fails."""

    name: str
    build: Callable[[int, int], bytes]  # (now, target port) -> first packet
    drains: bool


BRANCHES = (
    Branch("unknown user", lambda now, port: first_packet(STRANGER, now, port), True),
    Branch(
        "timestamp skew",
        lambda now, port: first_packet(KNOWN, now - SKEW_SECONDS, port),
        drains=True,
    ),
    # Offsets: EAuID 0..15, sealed length 16..33, nonce 34..41, instruction 42..
    Branch(
        "bad length tag",
        lambda now, port: _flip(first_packet(KNOWN, now, port), 20),
        drains=True,
    ),
    Branch(
        "bad header tag",
        lambda now, port: _flip(first_packet(KNOWN, now, port), 50),
        drains=True,
    ),
    Branch("looks like HTTP", lambda now, port: HTTP_REQUEST, drains=True),
    Branch("looks like TLS", lambda now, port: TLS_CLIENT_HELLO_PREFIX, drains=True),
    Branch(
        "unsupported security",
        lambda now, port: _sealed(now, port, security=2),
        drains=False,
    ),
    Branch(
        "bad checksum",
        lambda now, port: _sealed(
            now, port, SecurityType.AES_128_GCM, bad_checksum=True
        ),
        drains=False,
    ),
    Branch(
        "insecure encryption",
        lambda now, port: first_packet(
            model.VMessUser(id=KNOWN.id, security=model.Security.NONE), now, port
        ),
        drains=False,  # needs disable_insecure_encryption on the server
    ),
)
