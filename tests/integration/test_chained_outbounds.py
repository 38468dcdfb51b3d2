"""proxySettings (and Xray's dialerProxy): a VMess outbound that reaches its
server through another outbound's tunnel. Client -> hop server -> final
server -> target, all on loopback; each server's access log shows what it
carried."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import open_connect, send_and_read_to_end
from vtrio import server
from vtrio.config import loads

if TYPE_CHECKING:
    from collections.abc import Mapping

LOOPBACK = "127.0.0.1"
HOP_ID = "5e1bfe9b-8b4f-4b1a-9f43-0c7e2a8d1f10"
FINAL_ID = "7d2c6a40-1d7e-4a55-8a0b-3b5e9c2f4e21"
WS = {"network": "ws", "wsSettings": {"path": "/final"}}


def vmess_server(tag: str, user: str, stream: Mapping[str, Any] | None = None) -> str:
    inbound: dict[str, Any] = {
        "tag": tag,
        "listen": LOOPBACK,
        "port": 0,
        "protocol": "vmess",
        "settings": {"clients": [{"id": user, "email": f"{tag}@example.com"}]},
    }
    if stream:
        inbound["streamSettings"] = stream
    return json.dumps({"inbounds": [inbound], "outbounds": [{"protocol": "freedom"}]})


def vmess_out(tag: str, user: str, port: int, **extra: Any) -> dict[str, Any]:
    server_entry = {"address": LOOPBACK, "port": port, "users": [{"id": user}]}
    return {
        "tag": tag,
        "protocol": "vmess",
        "settings": {"vnext": [server_entry]},
        **extra,
    }


def client_config(hop: int, final: int, chained: dict[str, Any]) -> str:
    return json.dumps(
        {
            "inbounds": [
                {"tag": "socks-in", "listen": LOOPBACK, "port": 0, "protocol": "socks"}
            ],
            "outbounds": [
                vmess_out("final", FINAL_ID, final, **chained),
                vmess_out("hop", HOP_ID, hop),
            ],
        }
    )


CHAINS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "proxySettings": ({"proxySettings": {"tag": "hop"}}, None),
    "transportLayer": (
        {"proxySettings": {"tag": "hop", "transportLayer": True}, "streamSettings": WS},
        WS,
    ),
    "dialerProxy": ({"streamSettings": {**WS, "sockopt": {"dialerProxy": "hop"}}}, WS),
}


@pytest.mark.parametrize("form", list(CHAINS))
async def test_the_final_server_is_reached_through_the_hop(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    chained, final_stream = CHAINS[form]
    caplog.set_level(logging.INFO, "vtrio.access")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            hop = await nursery.start(server.run, loads(vmess_server("hop", HOP_ID)))
            final = await nursery.start(
                server.run, loads(vmess_server("final", FINAL_ID, final_stream))
            )
            hop_port, final_port = hop["hop"][0][1], final["final"][0][1]
            client = await nursery.start(
                server.run, loads(client_config(hop_port, final_port, chained))
            )
            stream = await open_connect(
                LOOPBACK, client["socks-in"][0][1], LOOPBACK, echo
            )
            async with stream:
                received = await send_and_read_to_end(stream, b"two hops")
            assert received == b"two hops"
            await trio.sleep(0.1)  # the servers write their lines as tunnels end
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    hop_lines = [line for line in lines if "email: hop@" in line]
    final_lines = [line for line in lines if "email: final@" in line]
    assert len(hop_lines) == len(final_lines) == 1, lines
    # The hop carried the VMess connection to the final server, which went on.
    assert f"tcp:127.0.0.1:{final_port} [hop -> " in hop_lines[0]
    assert re.search(rf"tcp:127\.0\.0\.1:{echo} \[final -> ", final_lines[0])


def test_without_transport_layer_the_stream_settings_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chained = {"proxySettings": {"tag": "hop"}, "streamSettings": WS}
    with caplog.at_level(logging.WARNING, "vtrio.config"):
        config = loads(client_config(1, 2, chained), environ={})
    final = config.outbounds[0]
    assert (final.stream.network, final.stream.dialer_proxy) == ("tcp", "hop")
    (message,) = [r.getMessage() for r in caplog.records]
    assert "$.outbounds[0].streamSettings are ignored" in message
