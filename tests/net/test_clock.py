"""The VMess clock and its NTP correction, against a loopback NTP server."""

from __future__ import annotations

import functools
import logging
import socket
import time

import pytest
import trio

from tests.support.ntp import reply_to, serve_ntp
from vtrio.config.model import Ntp
from vtrio.net import clock


async def test_query_measures_the_servers_offset() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ntp, 300.0)
        offset = await clock.query_offset("127.0.0.1", port)
        assert offset == pytest.approx(300.0, abs=0.5)
        nursery.cancel_scope.cancel()


async def test_keep_synced_moves_the_vmess_clock_and_restores_it() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ntp, -200.0)
        async with trio.open_nursery() as synced:
            await synced.start(clock.keep_synced, Ntp("127.0.0.1", port))
            assert clock.unix_now() - time.time() == pytest.approx(-200, abs=1.5)
            synced.cancel_scope.cancel()
        assert clock.unix_now() == pytest.approx(time.time(), abs=1.5)
        nursery.cancel_scope.cancel()


async def test_a_silent_server_is_logged_and_leaves_the_clock_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(serve_ntp, 500.0, answer=False))
        started = trio.current_time()
        with caplog.at_level(logging.WARNING, "vtrio.net.clock"):
            async with trio.open_nursery() as synced:
                await synced.start(clock.keep_synced, Ntp("127.0.0.1", port))
                assert trio.current_time() - started < clock.QUERY_TIMEOUT + 2
                assert clock.unix_now() == pytest.approx(time.time(), abs=1.5)
                synced.cancel_scope.cancel()
        assert [r.getMessage() for r in caplog.records] == ["NTP 127.0.0.1: no answer"]
        nursery.cancel_scope.cancel()


async def test_a_stale_answer_is_skipped_for_the_one_to_this_request() -> None:
    """A reply to an earlier request (another nonce) does not end the query."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        await server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]

        async def answer_twice() -> None:
            request, peer = await server.recvfrom(1024)
            stale = bytearray(reply_to(request, 900.0))
            stale[24:32] = bytes(8)
            await server.sendto(bytes(stale), peer)
            await server.sendto(reply_to(request, 60.0), peer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_twice)
            offset = await clock.query_offset("127.0.0.1", port)
        assert offset == pytest.approx(60.0, abs=0.5)
