"""vtrio's TLS / WebSocket transports against real v2ray and sing-box.

Theory of operation: two kinds of chains.

Transport only (v2ray): v2ray applies ``streamSettings`` to any inbound and any
outbound, so a dokodemo-door inbound or a freedom outbound with ws / tls / ws+tls
talks to vtrio's ``dial`` / ``accept_stream`` with no VMess in between. That
isolates transport bugs from protocol bugs:

    vtrio dial ==ws/tls==> v2ray dokodemo-door -> freedom -> echo
    socket -> v2ray dokodemo-door -> freedom ==ws/tls==> vtrio accept_stream (echo)

sing-box only offers its V2Ray transports on VMess, VLESS and Trojan, so it is
covered by the VMess chains below.

VMess (whole chain, runtime included): the interop harness' chain with the
transport added on both sides of the VMess hop,

    SOCKS5 client -> client side ==VMess over ws/tls==> server side -> echo

where one side is vtrio and the other a real peer. Payloads are checksummed.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.integration.test_transport import (
    client_tls,
    echo,
    exchange,
    server_tls,
    start_server,
    stream_settings,
)
from tests.interop import peers
from tests.support.certs import make_pki
from vtrio.net.transport import dial

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

WS_PATH = "/ws"
SERVER_NAME = "vtrio.test"
TIMEOUT = 30
PAYLOAD_SIZE = 512 * 1024
V2RAY_VERSION = "4.34"
SING_BOX_VERSION = "1.14"

# (network, security) of each transport under test; plain tcp is the matrix's.
TRANSPORTS = {
    "ws": ("ws", "none"),
    "tls": ("tcp", "tls"),
    "ws+tls": ("ws", "tls"),
}


def v2ray_stream(transport: str, *, server: bool, directory: Path) -> peers.JSON:
    """v2ray ``streamSettings`` for one side of ``transport``."""
    network, security = TRANSPORTS[transport]
    stream: peers.JSON = {"network": network, "security": security}
    if network == "ws":
        stream["wsSettings"] = {"path": WS_PATH}
    if security == "tls":
        if server:
            _, cert_file, key_file = make_pki().write(directory)
            certificate = {"certificateFile": str(cert_file), "keyFile": str(key_file)}
            stream["tlsSettings"] = {"certificates": [certificate]}
        else:
            stream["tlsSettings"] = {"serverName": SERVER_NAME, "allowInsecure": True}
    return stream


def vtrio_settings(transport: str, *, server: bool, **ws: Any) -> Any:
    network, security = TRANSPORTS[transport]
    tls = server_tls() if server else client_tls()
    return stream_settings(network, security, tls, path=WS_PATH, **ws)


def dokodemo(tag: str, port: int, target_port: int) -> peers.JSON:
    return {
        "tag": tag,
        "listen": peers.LOOPBACK,
        "port": port,
        "protocol": "dokodemo-door",
        "settings": {
            "address": peers.LOOPBACK,
            "port": target_port,
            "network": "tcp",
        },
    }


def assert_same(received: bytes, sent: bytes) -> None:
    assert len(received) == len(sent)
    assert hashlib.sha256(received).digest() == hashlib.sha256(sent).digest()


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_vtrio_dials_v2ray_transport(transport: str, tmp_path: Path) -> None:
    peer = peers.require_peer("v2ray", V2RAY_VERSION)
    data = random.Random(transport).randbytes(PAYLOAD_SIZE)
    (port,) = peers.free_ports(1)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            target = await start_server(
                nursery, stream_settings("tcp", "none", server_tls()), echo, errors
            )
            inbound = dokodemo("in", port, target)
            inbound["streamSettings"] = v2ray_stream(
                transport, server=True, directory=tmp_path
            )
            config = {
                "log": {"loglevel": "debug"},
                "inbounds": [inbound],
                "outbounds": [{"protocol": "freedom"}],
            }
            async with peers.open_peer(peer, "server", config, tmp_path, [port]):
                settings = vtrio_settings(transport, server=False)
                async with await dial(settings, peers.LOOPBACK, port) as stream:
                    received = await exchange(stream, data)
            nursery.cancel_scope.cancel()
    assert_same(received, data)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_v2ray_dials_vtrio_transport(transport: str, tmp_path: Path) -> None:
    peer = peers.require_peer("v2ray", V2RAY_VERSION)
    data = random.Random(transport).randbytes(PAYLOAD_SIZE)
    (port,) = peers.free_ports(1)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery, vtrio_settings(transport, server=True), echo, errors
            )
            outbound = {
                "protocol": "freedom",
                "streamSettings": v2ray_stream(
                    transport, server=False, directory=tmp_path
                ),
            }
            config = {
                "log": {"loglevel": "debug"},
                "inbounds": [dokodemo("in", port, server)],
                "outbounds": [outbound],
            }
            async with peers.open_peer(peer, "client", config, tmp_path, [port]):
                stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
                async with stream:
                    received = await exchange(stream, data)
            nursery.cancel_scope.cancel()
    assert_same(received, data)
    # The start-up probe of the harness is a bare TCP connect; nothing else fails.
    assert all("closed during" in str(error) for error in errors), errors
