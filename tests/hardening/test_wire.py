"""Hardening on the wire: replays, probes, hostile bytes, faults, many tunnels.

Every case runs a real vtrio server (``server.run``) on loopback in front of a
target that counts what reaches it. A failed handshake must leave the target
untouched, send nothing back, and end with a FIN (never a RST) — after the
drain when spec 9.2 says so, at once otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
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
from vtrio.config.model import HttpHeaderSettings, StreamSettings
from vtrio.net.transport import dial

if TYPE_CHECKING:
    import pathlib

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
            later = int(time.time()) + 200
            monkeypatch.setattr("vtrio.net.inbound.unix_now", lambda: later)
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


def behind_http_header() -> model.Config:
    """A server with the "http" TCP header on its VMess inbound, and a short
    handshake deadline (probes without a full VMess header wait for it)."""
    from vtrio.config import model

    base = server_config(SERVER_USERS, handshake=0.25)
    inbound = dataclasses.replace(
        base.inbounds[0],
        stream=model.StreamSettings(http_header=model.HttpHeaderSettings()),
    )
    return dataclasses.replace(base, inbounds=(inbound,))


REFUSAL = re.compile(
    rb"HTTP/1\.1 (400 Bad Request|404 Not Found)\r\nConnection: close\r\n"
    rb"Cache-Control: private\r\nContent-Length: 0\r\nDate: [^\r]+ GMT\r\n\r\n"
)


@settings(max_examples=15, deadline=None)
@given(
    head=st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"GET /x HTTP/1.1\r\n"]),
    data=st.binary(max_size=300),
)
def test_behind_the_http_header_any_bytes_get_one_refusal(
    head: bytes, data: bytes
) -> None:
    """Bytes with or without a head: the server sends one 400 or 404 and a
    FIN (after the drain or the handshake deadline), reaches no target and
    leaves no task; a real client then gets through."""

    async def main() -> None:
        with trio.fail_after(20):
            async with (
                target_running(Target()) as target,
                running(behind_http_header()) as (port, _),
            ):
                before = task_count()
                closing = await probe(port, head + data)
                assert REFUSAL.fullmatch(closing.answer), closing.answer
                assert closing.how == "fin"
                assert await wait_task_count(before) <= before
                assert target.accepted == 0
                client = client_connection(KNOWN, target.port)
                settings = StreamSettings(http_header=HttpHeaderSettings())
                async with await dial(settings, "127.0.0.1", port) as stream:
                    assert await vmess_exchange(stream, client, b"ok") == b"ok"

    trio.run(main)


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


async def test_a_killed_server_closes_the_client_side_promptly(
    tmp_path: pathlib.Path,
) -> None:
    """kill -9 of the server process mid-tunnel: the SOCKS client sees the end."""
    from tests.integration.test_chain import client_config
    from tests.integration.test_cli_processes import wait_for_port
    from tests.support.echo import closed_port
    from tests.support.socks5 import open_connect
    from vtrio.config import model

    server_port = await closed_port()
    config_file = tmp_path / "server.json"
    config_file.write_text(
        json.dumps(
            {
                "inbounds": [
                    {
                        "tag": "vmess-in",
                        "listen": "127.0.0.1",
                        "port": server_port,
                        "protocol": "vmess",
                        "settings": {"clients": [{"id": str(KNOWN.id)}]},
                    }
                ],
                "outbounds": [{"protocol": "freedom"}],
            }
        )
    )
    with trio.fail_after(30):
        async with target_running(Target(mode="stall")) as target:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "vtrio", "serve", str(config_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await wait_for_port(server_port)
                client = client_config(server_port, model.Security.AES_128_GCM)
                client = dataclasses.replace(
                    client,
                    outbounds=(
                        dataclasses.replace(
                            client.outbounds[0],
                            settings=model.VMessOutboundSettings(
                                (model.VMessServer("127.0.0.1", server_port, (KNOWN,)),)
                            ),
                        ),
                    ),
                )
                async with running(client, "socks-in") as (socks_port, _):
                    stream = await open_connect(
                        "127.0.0.1", socks_port, "127.0.0.1", target.port
                    )
                    async with stream:
                        await stream.send_all(b"x" * 5000)
                        await target.connected.wait()
                        process.kill()
                        started = time.monotonic()
                        with contextlib.suppress(trio.BrokenResourceError):
                            assert await stream.receive_some(100) == b""
                        assert time.monotonic() - started < 3
            finally:
                process.kill()
                await process.wait()
