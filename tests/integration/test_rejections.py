"""What a prober sees (nothing) and what the operator sees (one precise line)."""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING

import trio

from tests.integration.test_chain import LOOPBACK, USER_ID, server_config
from vtrio import server
from vtrio.config import model

if TYPE_CHECKING:
    import pytest

FAST_HANDSHAKE = model.LevelPolicy(handshake=0.5)


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(4096):
        received += chunk
    return received


async def start_server(nursery: trio.Nursery) -> int:
    bound = await nursery.start(server.run, server_config(policy=FAST_HANDSHAKE))
    port: int = bound["vmess-in"][0][1]
    return port


async def test_an_http_probe_gets_nothing_and_a_wrong_transport_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
                assert await read_until_closed(stream) == b""
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 1
    assert "looks like HTTP" in lines[0]


async def test_garbage_is_drained_then_closed_without_a_byte() -> None:
    """The server reads a bounded, per-server amount and closes (spec 9.1)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                sent = 0
                with trio.move_on_after(2):
                    try:
                        while sent < 20000:
                            await stream.send_all(os.urandom(64))
                            sent += 64
                    except trio.BrokenResourceError:
                        pass
                assert sent < 20000, "the server kept reading past any drain size"
                assert await read_until_closed(stream) == b""
            nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_closed_at_the_handshake_deadline() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                started = trio.current_time()
                assert await read_until_closed(stream) == b""
                assert 0.4 < trio.current_time() - started < 3
            nursery.cancel_scope.cancel()


async def test_rejection_lines_are_rate_limited_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            for _ in range(12):
                stream = await trio.open_tcp_stream(LOOPBACK, port)
                async with stream:
                    await stream.send_all(os.urandom(100))
                    await stream.send_eof()
                    assert await read_until_closed(stream) == b""
            nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 5


async def test_logs_never_carry_ids_or_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.integration.test_chain import exchange, start_chain
    from tests.support.echo import serve_tcp_echo
    from tests.support.socks5 import open_connect

    caplog.set_level(logging.DEBUG)
    payload = b"secret payload " + uuid.uuid4().hex.encode()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            socks_port = await start_chain(nursery, model.Security.AES_128_GCM)
            stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
            async with stream:
                assert await exchange(stream, payload) == payload
            nursery.cancel_scope.cancel()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"tcp:{LOOPBACK}:{echo_port} [vmess-in -> direct]" in text
    for secret in (str(USER_ID), USER_ID.hex, payload.decode()):
        assert secret not in text
