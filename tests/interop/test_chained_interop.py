"""Chained outbounds against v2ray 4.34: a client whose VMess outbound
reaches its server through another VMess outbound (``proxySettings``), with
the two servers' inbounds in one peer process. The same v2ray JSON runs a
vtrio client against v2ray servers, and a v2ray client against vtrio."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.interop import peers
from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import echo_through
from vtrio import server
from vtrio.config import loads

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

HOP = peers.Account(uuid="5e1bfe9b-8b4f-4b1a-9f43-0c7e2a8d1f10", security="aes-128-gcm")
FINAL = peers.Account(
    uuid="7d2c6a40-1d7e-4a55-8a0b-3b5e9c2f4e21", security="chacha20-poly1305"
)
PAYLOAD = bytes(range(256)) * 64


def configs() -> tuple[dict[str, Any], dict[str, Any], int, list[int]]:
    socks_port, hop_port, final_port = peers.free_ports(3)
    servers = peers.v2ray_server_config(
        [
            peers.Route(port=hop_port, account=HOP),
            peers.Route(port=final_port, account=FINAL),
        ]
    )
    client = peers.v2ray_client_config(
        [peers.Route(port=socks_port, account=FINAL, server_port=final_port)]
    )
    hop = peers.v2ray_client_config(
        [peers.Route(port=socks_port, account=HOP, server_port=hop_port)]
    )["outbounds"][0]
    hop["tag"] = "hop"
    client["outbounds"][0]["proxySettings"] = {"tag": "hop"}
    client["outbounds"].append(hop)
    return client, servers, socks_port, [hop_port, final_port]


async def test_vtrio_client_chains_through_v2ray_servers(tmp_path: Path) -> None:
    peer = peers.require_peer("v2ray", "4.34")
    client_json, servers_json, socks_port, server_ports = configs()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            async with peers.open_peer(
                peer, "server", servers_json, tmp_path, server_ports
            ) as v2ray:
                await nursery.start(server.run, loads(json.dumps(client_json)))
                assert (
                    await echo_through(
                        peers.LOOPBACK, socks_port, peers.LOOPBACK, target, PAYLOAD
                    )
                    == PAYLOAD
                )
                await trio.sleep(0.2)
                log = v2ray.log_text()
            nursery.cancel_scope.cancel()
    # v2ray's hop inbound carried the tunnel to its own final inbound.
    assert f"accepted tcp:127.0.0.1:{server_ports[1]}" in log, log
    assert f"accepted tcp:127.0.0.1:{target}" in log, log


async def test_v2ray_client_chains_through_vtrio_servers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vtrio.access")
    peer = peers.require_peer("v2ray", "4.34")
    client_json, servers_json, socks_port, server_ports = configs()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            await nursery.start(server.run, loads(json.dumps(servers_json)))
            async with peers.open_peer(
                peer, "client", client_json, tmp_path, [socks_port]
            ):
                assert (
                    await echo_through(
                        peers.LOOPBACK, socks_port, peers.LOOPBACK, target, PAYLOAD
                    )
                    == PAYLOAD
                )
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    # vtrio's hop inbound carried the tunnel to its own final inbound.
    assert any(f"tcp:127.0.0.1:{server_ports[1]} [vmess-0 -> " in x for x in lines), (
        lines
    )
    assert any(f"tcp:127.0.0.1:{target} [vmess-1 -> " in x for x in lines), lines
