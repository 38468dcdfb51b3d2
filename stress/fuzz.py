"""Fuzz the server-side VMess parser and the SOCKS/HTTP handshakes for a while.

Feeds ``ServerConnection`` random bytes, bit-flipped and truncated real first
packets (AEAD and legacy), split at random points; anything but a ``Rejected``
event, a ``RequestHeader`` or a typed ``RemoteProtocolError`` counts as a
crash. Prints inputs tried, crashes, and peak RSS.

    python stress/fuzz.py [--seconds 60] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import uuid

from vtrio.config.model import Security, VMessUser
from vtrio.errors import RemoteProtocolError
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import NEED_DATA, Rejected, RequestHeader
from vtrio.protocol.instruction import Command, Request
from vtrio.protocol.validator import UserValidator

USERS = (
    VMessUser(uuid.UUID("6d6e0c8a-5a0b-4a36-9a3e-0e5f2a7b9c11")),
    VMessUser(uuid.UUID("0f7d1f8e-2b45-4f0e-8e0c-7a1b3c5d7e9f"), alter_id=4),
)


def real_packet(rng: random.Random, now: int) -> bytes:
    user = rng.choice(USERS)
    account = VMessUser(user.id, user.alter_id, security=rng.choice(list(Security)))
    client = ClientConnection(
        account,
        Request(Command.TCP, "example.com", 443),
        now=now,
        random=rng.randbytes,
        machine="x86_64",
    )
    return client.start(rng.randbytes(rng.randrange(0, 200)))


def mutate(rng: random.Random, packet: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 600))
    if kind == 1 and packet:
        index = rng.randrange(len(packet))
        return (
            packet[:index]
            + bytes((packet[index] ^ (1 << rng.randrange(8)),))
            + packet[index + 1 :]
        )
    if kind == 2:
        return packet[: rng.randrange(len(packet) + 1)]
    return packet + rng.randbytes(rng.randrange(0, 64))


def run_one(
    validator: UserValidator, data: bytes, rng: random.Random, now: int
) -> None:
    connection = ServerConnection(validator, now=now, random=rng.randbytes)
    cut = rng.randrange(len(data) + 1)
    for part in (data[:cut], data[cut:], b""):
        connection.receive_data(part)
        while True:
            event = connection.next_event()
            if event is NEED_DATA or isinstance(event, Rejected | RequestHeader):
                break
        if isinstance(event, Rejected | RequestHeader):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    now = int(time.time())
    validator = UserValidator(USERS, now=now)
    tried = crashes = typed = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        data = mutate(rng, real_packet(rng, now))
        tried += 1
        try:
            run_one(validator, data, rng, now)
        except RemoteProtocolError:
            typed += 1
        except Exception as exc:  # a crash is what this script looks for
            crashes += 1
            print(f"crash on {data.hex()}: {exc!r}", file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"inputs tried: {tried}, typed errors: {typed}, crashes: {crashes},"
        f" peak RSS: {peak / 1024:.1f} MiB"
    )
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
