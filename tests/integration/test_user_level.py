"""userLevel of the socks, http and dokodemo-door inbounds picks the policy
level of their tunnels, as a VMess user's level does: a short connIdle at
level 1 closes an idle tunnel that level 0 keeps."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import open_connect, receive_exactly
from vtrio import server
from vtrio.config import loads

LOOPBACK = "127.0.0.1"


def config_json(protocol: str, level: int, echo: int) -> str:
    settings: dict[str, Any] = {"userLevel": level}
    if protocol == "dokodemo-door":
        settings |= {"address": LOOPBACK, "port": echo}
    return json.dumps(
        {
            "policy": {"levels": {"1": {"connIdle": 0.3}}},
            "inbounds": [
                {
                    "tag": "in",
                    "listen": LOOPBACK,
                    "port": 0,
                    "protocol": protocol,
                    "settings": settings,
                }
            ],
            "outbounds": [{"protocol": "freedom"}],
        }
    )


async def open_tunnel(protocol: str, proxy: int, echo: int) -> trio.abc.Stream:
    if protocol == "socks":
        return await open_connect(LOOPBACK, proxy, LOOPBACK, echo)
    stream = await trio.open_tcp_stream(LOOPBACK, proxy)
    if protocol == "http":
        await stream.send_all(f"CONNECT {LOOPBACK}:{echo} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += await receive_exactly(stream, 1)
        assert head.startswith(b"HTTP/1.1 200")
    return stream


@pytest.mark.parametrize("protocol", ["socks", "http", "dokodemo-door"])
@pytest.mark.parametrize("level", [0, 1])
async def test_the_inbounds_user_level_sets_the_idle_timeout(
    protocol: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vtrio.access")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(
                server.run, loads(config_json(protocol, level, echo), environ={})
            )
            stream = await open_tunnel(protocol, bound["in"][0][1], echo)
            async with stream:
                await stream.send_all(b"ping")
                assert await receive_exactly(stream, 4) == b"ping"
                closed = False
                with trio.move_on_after(1.2):  # level 1 idles out after 0.3 s
                    closed = await stream.receive_some(10) == b""
            assert closed is (level == 1)
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    assert any("idle-timeout" in line for line in lines) is (level == 1)
