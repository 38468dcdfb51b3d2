"""Hardening on the wire: replays, probes, hostile bytes, faults, many tunnels.

Every case runs a real vtrio server (``server.run``) on loopback in front of a
target that counts what reaches it. A failed handshake must leave the target
untouched, send nothing back, and end with a FIN (never a RST) — after the
drain when spec 9.2 says so, at once otherwise.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening.branches import BRANCHES, KNOWN, LEGACY, SERVER_USERS, Branch
from tests.support.hardening import (
    Target,
    abort,
    client_connection,
    probe,
    running,
    server_config,
    target_running,
    task_count,
    vmess_exchange,
    wait_task_count,
)

if TYPE_CHECKING:
    from vtrio.config import model

HANDSHAKE = 1.0


def config(**options: object) -> model.Config:
    return server_config(SERVER_USERS, handshake=HANDSHAKE, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("branch", BRANCHES, ids=lambda b: b.name)
async def test_every_failure_branch_is_silent(branch: Branch) -> None:
    with trio.fail_after(10):
        async with (
            target_running(Target()) as target,
            running(config(disable_insecure_encryption=True)) as (port, _),
        ):
            closing = await probe(port, branch.build(int(time.time()), target.port))
    assert closing.answer == b""
    assert closing.how == "fin"
    assert target.accepted == 0
    if branch.drains:
        # Too few bytes to satisfy the drain: the deadline ends it.
        assert closing.seconds >= HANDSHAKE * 0.9
    else:
        assert closing.seconds < HANDSHAKE * 0.8


@pytest.mark.parametrize("account", [KNOWN, LEGACY], ids=["aead", "legacy"])
async def test_a_replayed_first_packet_never_reaches_the_target(
    account: model.VMessUser,
) -> None:
    with trio.fail_after(10):
        async with (
            target_running(Target()) as target,
            running(config()) as (port, _),
        ):
            client = client_connection(account, target.port)
            first = client.start(b"hello")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert (
                    await vmess_exchange(stream, client, b"", first_packet=first)
                    == b"hello"
                )
            assert target.accepted == 1
            for _ in range(2):  # at once, and again a little later
                closing = await probe(port, first)
                assert (closing.answer, closing.how) == (b"", "fin")
                await trio.sleep(0.2)
            assert target.accepted == 1


async def test_a_replay_after_the_window_is_refused_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ±120 s the auth ID itself is stale: refused by the time check."""
    with trio.fail_after(10):
        async with (
            target_running(Target()) as target,
            running(config()) as (port, _),
        ):
            first = client_connection(KNOWN, target.port).start(b"hi")
            later = time.time() + 200
            monkeypatch.setattr("vtrio.net.inbound.time.time", lambda: later)
            closing = await probe(port, first)
    assert (closing.answer, closing.how, target.accepted) == (b"", "fin", 0)


async def test_hostile_bytes_leave_the_server_serving() -> None:
    """Many kinds of garbage at once; then a real client still gets through."""
    seeds = [os.urandom(n) for n in (1, 15, 16, 17, 60, 100, 400, 3000)]
    with trio.fail_after(20):
        async with (
            target_running(Target()) as target,
            running(config()) as (port, _),
        ):
            before = task_count()
            async with trio.open_nursery() as nursery:
                for data in seeds * 4:
                    nursery.start_soon(probe, port, data)
            assert await wait_task_count(before) <= before
            client = client_connection(KNOWN, target.port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert await vmess_exchange(stream, client, b"still ok") == b"still ok"


def socks_and_http() -> model.Config:
    from vtrio.config import model

    inbounds = (
        model.Inbound(
            "socks", "socks", "127.0.0.1", (0,), model.SocksInboundSettings()
        ),
        model.Inbound("http", "http", "127.0.0.1", (0,), model.HttpInboundSettings()),
    )
    direct = model.Outbound("direct", "freedom", model.FreedomSettings())
    return model.Config(inbounds=inbounds, outbounds=(direct,))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=300), tag=st.sampled_from(["socks", "http"]))
def test_socks_and_http_inbounds_take_any_bytes(data: bytes, tag: str) -> None:
    """Random bytes into the socks and http inbounds: closed, no task left."""

    async def main() -> None:
        with trio.fail_after(10):
            async with running(socks_and_http(), tag) as (port, _):
                before = task_count()
                closing = await probe(port, data + b"\r\n\r\n")
                assert closing.how in ("fin", "rst")
                assert await wait_task_count(before) <= before

    trio.run(main)


async def test_a_client_that_vanishes_leaves_no_task_behind() -> None:
    with trio.fail_after(15):
        async with (
            target_running(Target(mode="stall")) as target,
            running(config()) as (port, _),
        ):
            before = task_count()
            client = client_connection(KNOWN, target.port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(client.start(b"x" * 1000))
            await target.connected.wait()
            abort(stream)  # RST, no FIN
            await target.closed.wait()  # vtrio closed its side of the tunnel
            assert await wait_task_count(before) <= before


async def test_a_target_reset_mid_stream_closes_the_client_cleanly() -> None:
    with trio.fail_after(15):
        async with (
            target_running(Target(mode="reset")) as target,
            running(config()) as (port, _),
        ):
            client = client_connection(KNOWN, target.port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                started = time.monotonic()
                answer = await vmess_exchange(stream, client, b"boom")
            assert answer == b""
            assert time.monotonic() - started < HANDSHAKE * 3
            assert target.accepted == 1


async def test_two_hundred_concurrent_tunnels_lose_nothing() -> None:
    with trio.fail_after(60):
        async with (
            target_running(Target()) as target,
            running(config()) as (port, _),
        ):
            before = task_count()
            failures: list[str] = []

            async def tunnel(number: int) -> None:
                data = hashlib.shake_256(f"tunnel {number}".encode()).digest(20000)
                client = client_connection(KNOWN, target.port)
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    back = await vmess_exchange(stream, client, data)
                if back != data:
                    failures.append(f"tunnel {number}: {len(back)} bytes back")

            async with trio.open_nursery() as nursery:
                for number in range(200):
                    nursery.start_soon(tunnel, number)
            assert failures == []
            assert target.accepted == 200
            assert await wait_task_count(before) <= before
