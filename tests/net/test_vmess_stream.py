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
from vtrio.protocol.connection import ServerConnection
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
