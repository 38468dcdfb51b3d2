"""Micro-benchmarks of the sans-IO VMess core; prints a table.

Run: ``python bench/micro_protocol.py``. It measures

* microseconds per chunk, encode (seal) and decode (open), for every body
  security at 2 KiB, 8 KiB and 16 KiB of plaintext per chunk (for the 16 KiB
  row the writer's 16305-byte limit is raised, so each call is one chunk);
* microseconds per server-side AEAD handshake (auth-ID scan, header open,
  instruction checks) with 1, 1 000 and 10 000 users,
  both for a first contact (the matching user scanned last, the worst case)
  and for a user matched lately (tried before the full scan).

This is a script, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import TYPE_CHECKING, TypeVar

from vtrio.config.model import VMessUser
from vtrio.protocol import body
from vtrio.protocol.body import ChunkDecoder, ChunkEncoder, Framing
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import RequestHeader
from vtrio.protocol.instruction import Command, Option, Request, SecurityType
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from collections.abc import Callable

SIZES = (2048, 8192, 16384)
FRAMINGS = (
    ("aes-128-gcm", SecurityType.AES_128_GCM, Option(0x0D)),
    ("aes-128-gcm +authlen", SecurityType.AES_128_GCM, Option(0x1D)),
    ("chacha20-poly1305", SecurityType.CHACHA20_POLY1305, Option(0x0D)),
    ("none", SecurityType.NONE, Option(0x05)),
    ("zero (raw)", SecurityType.NONE, Option(0)),
    ("aes-128-cfb", SecurityType.LEGACY, Option(0x01)),
)
USER_COUNTS = (1, 1_000, 10_000)
HANDSHAKES = 300
CHUNKS = 1500
T = TypeVar("T")
NOW = 1_700_000_000


def per_item_us(items: list[T], function: Callable[[T], object]) -> float:
    """Microseconds per item: the best of 3 runs over ``items`` (split in 3)."""
    third = len(items) // 3
    runs = []
    for part in range(3):
        batch = items[part * third : (part + 1) * third]
        start = time.perf_counter()
        for item in batch:
            function(item)
        runs.append((time.perf_counter() - start) / len(batch) * 1e6)
    return min(runs)


def chunk_costs(
    security: SecurityType, options: Option, size: int
) -> tuple[float, float]:
    """Encode and decode cost of one ``size``-byte chunk, same keys throughout."""
    framing = Framing.of(security, options, datagram=False)
    key, iv = os.urandom(16), os.urandom(16)

    def encoder_of() -> ChunkEncoder:
        return ChunkEncoder(
            framing, random=os.urandom, key=key, iv=iv, request_key=key, request_iv=iv
        )

    encoder = encoder_of()
    payloads = [os.urandom(size)] * CHUNKS
    encode = per_item_us(payloads, encoder.encode_stream)
    # Decode a long run of chunks from one encoder, as a connection would.
    source = encoder_of()
    chunks = [source.encode_stream(p) for p in payloads]
    decoder = ChunkDecoder(framing, key=key, iv=iv, request_key=key, request_iv=iv)

    def decode_one(chunk: bytes | bytearray) -> None:
        decoder.feed(chunk)
        decoder.next_payload()

    return encode, per_item_us(chunks, decode_one)


def handshake_cost(users: int, *, warm: bool) -> float:
    """Server-side cost of accepting one AEAD first packet.

    Cold: every packet comes from a different user, among those scanned last
    (a first contact, the worst case). Warm: one user over and over, found
    among the recently matched users before the full scan.
    """
    accounts = [VMessUser(id=uuid.uuid4()) for _ in range(users)]
    validator = UserValidator(accounts, now=NOW)
    rng = random.Random(1)
    senders = [accounts[-1]] * HANDSHAKES if warm else accounts[-HANDSHAKES:]
    packets = [
        ClientConnection(
            sender,
            Request(Command.TCP, "example.com", 443),
            now=NOW,
            random=rng.randbytes,
            machine="x86_64",
        ).start(b"GET / HTTP/1.1\r\n\r\n")
        for sender in senders
    ]

    def handshake(packet: bytes) -> None:
        server = ServerConnection(validator, now=NOW, random=os.urandom)
        server.receive_data(packet)
        assert isinstance(server.next_event(), RequestHeader)

    return per_item_us(packets, handshake)


def main() -> None:
    body.MAX_CHUNK_PAYLOAD = max(SIZES)  # one chunk per call, 16 KiB row included
    print("chunk codec, microseconds per chunk (encode = seal, decode = open)")
    print(
        f"{'security':24}" + "".join(f"{f'{s // 1024} KiB enc/dec':>22}" for s in SIZES)
    )
    for name, security, options in FRAMINGS:
        cells = []
        for size in SIZES:
            encode, decode = chunk_costs(security, options, size)
            cells.append(f"{encode:9.1f} / {decode:9.1f}")
        print(f"{name:24}" + "".join(f"{cell:>22}" for cell in cells))
    print()
    print("server AEAD handshake, microseconds")
    print(f"{'users':>7} {'first contact':>14} {'recent user':>12}")
    for users in USER_COUNTS:
        cold = handshake_cost(users, warm=False) if users > 1 else float("nan")
        print(f"{users:>7} {cold:14.1f} {handshake_cost(users, warm=True):12.1f}")


if __name__ == "__main__":
    main()
