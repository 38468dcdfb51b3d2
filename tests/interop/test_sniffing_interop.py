"""Sniffing as v2ray 4.34 does it: one server config, run by v2ray and by
vtrio, routes the same VMess tunnels the same way.

Each tunnel asks for an address nothing answers at (TEST-NET-1) or for the
echo target, and its first bytes name ``localhost`` (HTTP Host, TLS SNI) or
are a BitTorrent handshake, which a rule on the sniffed protocol blocks.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.hardening.branches import KNOWN
from tests.interop import peers
from tests.protocol.test_sniff import client_hello
from tests.support.echo import serve_tcp_echo
from tests.support.hardening import client_connection, vmess_exchange
from vtrio.errors import RemoteProtocolError

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

pytestmark = pytest.mark.interop

UNREACHABLE = ipaddress.ip_address("192.0.2.1")
LOCAL = ipaddress.ip_address(peers.LOOPBACK)
FIRST_BYTES = {
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    "tls": client_hello("localhost"),
    "bittorrent": b"\x13BitTorrent protocol" + bytes(48),
}


def sniffing_server_config(port: int) -> dict[str, Any]:
    account = peers.Account(uuid=str(KNOWN.id), security="aes-128-gcm")
    config = peers.v2ray_server_config([peers.Route(port=port, account=account)])
    config["inbounds"][0]["sniffing"] = {
        "enabled": True,
        "destOverride": ["http", "tls"],
    }
    config["outbounds"].append({"tag": "block", "protocol": "blackhole"})
    config["routing"] = {
        "rules": [{"type": "field", "protocol": ["bittorrent"], "outboundTag": "block"}]
    }
    return config


async def tunnel(
    port: int,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    target: int,
    data: bytes,
) -> bytes:
    """What comes back through one VMess tunnel; b"" when the server closed it."""
    client = client_connection(KNOWN, target, address=address)
    stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
    async with stream:
        try:
            return await vmess_exchange(stream, client, data)
        except (RemoteProtocolError, trio.BrokenResourceError):
            return b""


@pytest.mark.parametrize("server_kind", ["v2ray", "vtrio"])
async def test_v2ray_and_vtrio_route_sniffed_tunnels_alike(
    server_kind: str, tmp_path: Path
) -> None:
    (port,) = peers.free_ports(1)
    config = sniffing_server_config(port)
    running: AbstractAsyncContextManager[peers.RunningPeer]
    if server_kind == "v2ray":
        peer = peers.require_peer("v2ray", "4.34")
        running = peers.open_peer(peer, "server", config, tmp_path, [port])
    else:
        running = peers.open_vtrio_process(config, tmp_path, [port])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_tcp_echo, peers.LOOPBACK)
            async with running:
                seen = {
                    (kind, str(address)): await tunnel(port, address, target, data)
                    for kind, data in FIRST_BYTES.items()
                    for address in (UNREACHABLE, LOCAL)
                }
            nursery.cancel_scope.cancel()
    assert seen == {
        ("http", "192.0.2.1"): FIRST_BYTES["http"],  # sent to localhost
        ("http", "127.0.0.1"): FIRST_BYTES["http"],
        ("tls", "192.0.2.1"): FIRST_BYTES["tls"],
        ("tls", "127.0.0.1"): FIRST_BYTES["tls"],
        ("bittorrent", "192.0.2.1"): b"",  # blocked wherever it goes
        ("bittorrent", "127.0.0.1"): b"",
    }
