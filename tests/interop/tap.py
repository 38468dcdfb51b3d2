"""A recording TCP relay between a VMess client and server.

Theory of operation: a case named ``[...,legacy]`` must really carry a legacy
(MD5) request header, and an ``[...,aead]`` case an AEAD one; otherwise a
peer that quietly ignored ``alterId`` would turn a legacy case into a second
AEAD case. The tap forwards bytes unchanged in both directions and keeps the
first 16 bytes of every connection. A legacy header starts with
``HMAC-MD5(id, BE64(ts))`` for the primary id or one of its alter ids and a
timestamp near now (spec sections 1.4 and 2.1), which ``header_kind``
recomputes with nothing but ``hashlib``; anything else in those 16 bytes is
an AEAD auth id (spec 3.2). The check is independent of vtrio's own code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass, field
from typing import Literal

import trio

AUTH_SIZE = 16
RELAY_SIZE = 64 * 1024
# The legacy client adds up to ±30 s of jitter; servers accept ±120 s.
LEGACY_WINDOW = 120
ALTER_ID_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
ALTER_ID_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"

HeaderKind = Literal["legacy", "aead"]


def alter_ids(primary: uuid.UUID, count: int) -> list[bytes]:
    """The legacy alter ids derived from ``primary`` (spec 1.4)."""
    ids = []
    current = primary.bytes
    for _ in range(count):
        state = hashlib.md5(current + ALTER_ID_SALT)
        candidate = state.digest()
        while candidate == current:
            state.update(ALTER_ID_RETRY_SALT)
            candidate = state.digest()
        ids.append(candidate)
        current = candidate
    return ids


def header_kind(
    first_bytes: bytes, user_id: str, alter_id: int, now: float
) -> HeaderKind:
    """Classify a request by its first 16 bytes (spec 2.1 versus 3.2)."""
    primary = uuid.UUID(user_id)
    auth = first_bytes[:AUTH_SIZE]
    keys = [primary.bytes, *alter_ids(primary, alter_id)]
    for key in keys:
        for ts in range(int(now) - LEGACY_WINDOW, int(now) + LEGACY_WINDOW + 1):
            expected = hmac.new(key, struct.pack(">Q", ts), hashlib.md5).digest()
            if hmac.compare_digest(auth, expected):
                return "legacy"
    return "aead"


@dataclass
class Tap:
    """The connections a tap has seen: the first bytes of each, in order."""

    port: int = 0
    # Filled while the relay runs, so a check after the traffic sees them.
    openings: list[bytearray] = field(default_factory=list)


async def _pump(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    opening: bytearray | None,
) -> None:
    """Copy one direction; record its first bytes into ``opening`` if given."""
    while data := await source.receive_some(RELAY_SIZE):
        if opening is not None and len(opening) < AUTH_SIZE:
            opening += data[: AUTH_SIZE - len(opening)]
        await sink.send_all(data)
    await sink.send_eof()


async def serve_tap(
    upstream_port: int,
    tap: Tap,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on a loopback port and relay every connection to ``upstream_port``.

    Args:
        upstream_port: the VMess server's port on 127.0.0.1.
        tap: filled with the bound port and the first bytes of each connection.
        task_status: receives the bound port.
    """

    async def relay(downstream: trio.SocketStream) -> None:
        opening = bytearray()
        tap.openings.append(opening)
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
            async with downstream, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, downstream, upstream, opening)
                nursery.start_soon(_pump, upstream, downstream, None)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # A side closing abruptly is the peers' business; the bytes that
            # got through are what the case checks.
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tap.port = listeners[0].socket.getsockname()[1]
    task_status.started(tap.port)
    await trio.serve_listeners(relay, listeners)
