"""Shared pieces of the protocol tests: users, a fixed clock, seeded randomness,
and a way to push bytes through a connection and collect its events."""

from __future__ import annotations

import json
import random as stdlib_random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vtrio.config.model import Security, VMessUser
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import (
    NEED_DATA,
    Data,
    Datagram,
    EndOfStream,
    Event,
    Rejected,
)
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from vtrio.protocol.instruction import Request

FIXED_NOW = 1_700_000_000
USER_ID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
OTHER_ID = uuid.UUID("450bae28-b9da-67d0-16bc-4918dc8d79b5")
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "vmess.json").read_text("utf-8")
)


def seeded_random(seed: int = 0) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom."""
    return stdlib_random.Random(seed).randbytes


def user(
    security: Security = Security.AES_128_GCM,
    *,
    user_id: uuid.UUID = USER_ID,
    alter_id: int = 0,
    experiments: frozenset[str] = frozenset(),
) -> VMessUser:
    return VMessUser(
        id=user_id, alter_id=alter_id, security=security, experiments=experiments
    )


def pair(
    account: VMessUser,
    request: Request,
    *,
    server_users: tuple[VMessUser, ...] | None = None,
    client_now: int = FIXED_NOW,
    server_now: int = FIXED_NOW,
    seed: int = 0,
    **server_options: bool,
) -> tuple[ClientConnection, ServerConnection, UserValidator]:
    """A client for ``account`` and a server whose validator knows it."""
    validator = UserValidator(
        server_users if server_users is not None else (account,), now=server_now
    )
    client = ClientConnection(
        account, request, now=client_now, random=seeded_random(seed), machine="x86_64"
    )
    server = ServerConnection(
        validator, now=server_now, random=seeded_random(seed + 1), **server_options
    )
    return client, server, validator


def split(data: bytes, points: list[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (sorted, clipped)."""
    previous = 0
    for point in sorted({min(max(p, 0), len(data)) for p in points}):
        yield data[previous:point]
        previous = point
    yield data[previous:]


def feed_all(
    connection: ClientConnection | ServerConnection,
    pieces: Iterable[bytes],
    *,
    eof: bool = False,
) -> list[Event]:
    """Feed pieces one by one, collecting events, until the stream ends or
    the handshake is rejected; then EOF if asked."""
    events: list[Event] = []
    for piece in [*(p for p in pieces if p), *([b""] if eof else [])]:
        if events and isinstance(events[-1], (EndOfStream, Rejected)):
            break
        connection.receive_data(piece)
        events.extend(drain(connection))
    return events


def drain(connection: ClientConnection | ServerConnection) -> list[Event]:
    """Events until NEED_DATA or the end of the stream."""
    events: list[Event] = []
    while True:
        event = connection.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, (EndOfStream, Rejected)):
            return events


def payload_of(events: list[Event]) -> bytes:
    return b"".join(
        e.data if isinstance(e, Data) else e.payload
        for e in events
        if isinstance(e, (Data, Datagram))
    )
