"""VMessStream passes trio's generic half-closeable stream checks.

The client and server ends wrap the two halves of a memory stream pair; the
maker runs the handshake (the client's header leaves with its first send) so
that either end may then speak first, as trio's checks require.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import trio
import trio.testing

from vtrio.config.model import Security, VMessUser
from vtrio.net.vmess_stream import VMessStream
from vtrio.protocol.connection import (
    ClientConnection,
    ReceiveState,
    SendState,
    ServerConnection,
)
from vtrio.protocol.events import RequestHeader
from vtrio.protocol.instruction import Command, Request
from vtrio.protocol.validator import UserValidator

USER = VMessUser(uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811"))


def stream_maker(security: Security, *, lockstep: bool):
    async def make() -> tuple[VMessStream, VMessStream]:
        pair = (
            trio.testing.lockstep_stream_pair()
            if lockstep
            else trio.testing.memory_stream_pair()
        )
        account = VMessUser(USER.id, security=security)
        client = VMessStream.client(
            pair[0], account, Request(Command.TCP, "example.com", 80)
        )
        validator = UserValidator([USER], now=int(time.time()))
        connection = ServerConnection(
            validator, now=int(time.time()), random=os.urandom
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"")
            server, request = await VMessStream.accept(pair[1], connection)
        assert isinstance(request, RequestHeader)
        return client, server

    return make


@pytest.mark.parametrize(
    "security", [Security.AES_128_GCM, Security.NONE], ids=lambda s: s.value
)
async def test_generic_half_closeable_stream_checks(security: Security) -> None:
    with trio.fail_after(20):
        await trio.testing.check_half_closeable_stream(
            stream_maker(security, lockstep=False), None
        )


async def test_generic_checks_in_lockstep() -> None:
    with trio.fail_after(20):
        await trio.testing.check_half_closeable_stream(
            stream_maker(Security.CHACHA20_POLY1305, lockstep=True), None
        )


class _CountingServer(ServerConnection):
    """Records whether each prepare_response came with a request to answer."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.useful_prepares = 0

    def prepare_response(self) -> None:
        if self.request is not None and self.send_state is SendState.IDLE:
            self.useful_prepares += 1
        super().prepare_response()


class _CountingClient(ClientConnection):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.useful_prepares = 0

    def prepare_response(self) -> None:
        if (
            self.send_state is SendState.OPEN
            and self.receive_state is ReceiveState.HEADER
        ):
            self.useful_prepares += 1
        super().prepare_response()


async def test_both_ends_key_the_response_while_they_wait() -> None:
    """The wait for the peer is when the response's keys are derived, so
    they are ready before the answer arrives rather than made after it."""
    left, right = trio.testing.memory_stream_pair()
    now = int(time.time())
    client_conn = _CountingClient(
        USER,
        Request(Command.TCP, "example.com", 80),
        now=now,
        random=os.urandom,
        machine="x86_64",
    )
    server_conn = _CountingServer(
        UserValidator([USER], now=now), now=now, random=os.urandom
    )
    client = VMessStream(left, client_conn)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"ping")
            server, request = await VMessStream.accept(right, server_conn)
        assert isinstance(request, RequestHeader)
        assert await server.receive_some() == b"ping"
        assert server_conn.useful_prepares == 0  # the header came with data
        received: list[bytes] = []

        async def receive(stream: VMessStream) -> None:
            received.append(await stream.receive_some())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, server)  # waits: prepares
            nursery.start_soon(receive, client)  # waits: prepares
            await trio.testing.wait_all_tasks_blocked()
            assert server_conn.useful_prepares == 1
            assert client_conn.useful_prepares >= 1  # next_event does it too
            await server.send_all(b"pong")
            await client.send_all(b"more")
    assert sorted(received) == [b"more", b"pong"]


async def test_receive_nowait_returns_what_decodes_without_reading() -> None:
    """The payload that came with the header is there at once; after it the
    stream says it would wait (it never reads the transport itself)."""
    left, right = trio.testing.memory_stream_pair()
    now = int(time.time())
    client = VMessStream.client(left, USER, Request(Command.TCP, "example.com", 80))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"first payload")
        server, request = await VMessStream.accept(
            right,
            ServerConnection(
                UserValidator([USER], now=now), now=now, random=os.urandom
            ),
        )
    assert isinstance(request, RequestHeader)
    with trio.testing.assert_no_checkpoints():
        assert server.receive_nowait(5) == b"first"
        assert server.receive_nowait(100) == b" payload"
        assert server.receive_nowait(100) is None
    await client.send_eof()
    assert server.receive_nowait(100) is None  # still unread on the transport
    assert await server.receive_some() == b""
    assert server.receive_nowait(100) == b""
