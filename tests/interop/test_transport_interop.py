"""vtrio's TLS / WebSocket transports against real v2ray and sing-box.

Theory of operation: two kinds of chains.

Transport only (v2ray): v2ray applies ``streamSettings`` to any inbound and any
outbound, so a dokodemo-door inbound or a freedom outbound with ws / tls / ws+tls
talks to vtrio's ``dial`` / ``accept_stream`` with no VMess in between. That
isolates transport bugs from protocol bugs:

    vtrio dial ==ws/tls==> v2ray dokodemo-door -> freedom -> echo
    socket -> v2ray dokodemo-door -> freedom ==ws/tls==> vtrio accept_stream (echo)

sing-box offers its V2Ray transports only on VMess, VLESS and Trojan. Trojan's
request is a fixed 68-byte prefix (password hash, command, address) followed by
raw payload, so the test writes or checks it by hand and the transport is again
the only thing under test, early data included:

    vtrio dial + trojan prefix ==ws/tls==> sing-box trojan -> direct -> echo
    socket -> sing-box direct -> trojan ==ws/tls==> vtrio accept_stream (check
    the prefix, echo the rest)

VMess (whole chain, runtime included): the interop harness' chain with the
transport added on both sides of the VMess hop,

    SOCKS5 client -> client side ==VMess over ws/tls==> server side -> echo

where one side is vtrio and the other a real peer. Payloads are checksummed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import random
import re
import socket
from contextlib import AsyncExitStack
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
from vtrio.config.model import HttpHeaderSettings, HttpRequestHead, HttpResponseHead
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

TROJAN_PASSWORD = "vtrio-transport-interop"
SING_BOX_EARLY_DATA = 2048

# (network, security) of each transport under test; plain tcp is the matrix's.
TRANSPORTS = {
    "ws": ("ws", "none"),
    "tls": ("tcp", "tls"),
    "ws+tls": ("ws", "tls"),
    "httpupgrade": ("httpupgrade", "none"),
    "httpupgrade+tls": ("httpupgrade", "tls"),
    "http": ("tcp", "none"),
    "http+tls": ("tcp", "tls"),
    "grpc": ("grpc", "none"),
    "grpc+tls": ("grpc", "tls"),
    "h2+tls": ("h2", "tls"),
}
# gRPC and HTTP/2: VMess chains only (their tunnels are HTTP/2 streams, which
# the transport-only tests' dial/accept_stream do not run). HTTP/2 only over
# TLS: v2ray's client refuses it without, sing-box then speaks HTTP/1.1.
GRPC = {"grpc", "grpc+tls"}
HTTP2 = {*GRPC, "h2+tls"}
GRPC_SERVICE = "vtrio.Tunnel"
H2_PATH = "/h2/tunnel"
H2_HOSTS = ["h2.example.com", "cdn.example.net"]
# TCP with the "http" header (v2ray and Xray; sing-box has no such header).
HTTP_HEADER = {"http", "http+tls"}
HTTP_PATHS = ["/obfs", "/video/stream.mp4"]
HTTP_HOSTS = ["cdn.example.com", "media.example.net"]
# v2ray 4.34 has no HTTPUpgrade (v2fly 5.10 and Xray have it) and no gRPC
# (v2fly 4.36).
V2RAY_TRANSPORTS = [
    name for name in TRANSPORTS if "httpupgrade" not in name and name not in HTTP2
]
V2RAY_VMESS_TRANSPORTS = [*V2RAY_TRANSPORTS, "h2+tls"]
SING_BOX_TRANSPORTS = [name for name in TRANSPORTS if name not in HTTP_HEADER]
# Xray 26 removed the HTTP/2 transport (for XHTTP).
XRAY_VERSION = "26.10"
XRAY_TRANSPORTS = [name for name in TRANSPORTS if name != "h2+tls"]
PEER_VERSIONS = {
    "v2ray": V2RAY_VERSION,
    "sing-box": SING_BOX_VERSION,
    "xray": XRAY_VERSION,
}


def http_header_json() -> peers.JSON:
    """A ``tcpSettings`` with the "http" header, off its defaults."""
    request = {"path": HTTP_PATHS, "headers": {"Host": HTTP_HOSTS}}
    response = {"headers": {"Content-Type": "video/mp4"}}
    return {"header": {"type": "http", "request": request, "response": response}}


def http_header_settings() -> HttpHeaderSettings:
    """vtrio's model of ``http_header_json``."""
    return HttpHeaderSettings(
        HttpRequestHead(
            paths=tuple(HTTP_PATHS), headers=(("Host", tuple(HTTP_HOSTS)),)
        ),
        HttpResponseHead(headers=(("Content-Type", ("video/mp4",)),)),
    )


def v2ray_stream(
    transport: str,
    *,
    server: bool,
    directory: Path,
    early: bool = False,
    trust_ca: bool = False,
) -> peers.JSON:
    """v2ray ``streamSettings`` for one side of ``transport``.

    ``early`` adds v2fly's ``maxEarlyData`` / ``earlyDataHeaderName`` (4.37+, so
    only for vtrio); ``trust_ca`` makes a client verify the test CA instead of
    setting ``allowInsecure``.
    """
    network, security = TRANSPORTS[transport]
    stream: peers.JSON = {"network": network, "security": security}
    if network == "httpupgrade":
        stream["httpupgradeSettings"] = {"path": WS_PATH}
    if network == "grpc":
        stream["grpcSettings"] = {"serviceName": GRPC_SERVICE}
    if network == "h2":
        stream["httpSettings"] = {"host": H2_HOSTS, "path": H2_PATH}
    if transport in HTTP_HEADER:
        stream["tcpSettings"] = http_header_json()
    if network == "ws":
        stream["wsSettings"] = {"path": WS_PATH}
        if early:
            stream["wsSettings"] |= {
                "maxEarlyData": SING_BOX_EARLY_DATA,
                "earlyDataHeaderName": "Sec-WebSocket-Protocol",
            }
    if security == "tls":
        ca_file, cert_file, key_file = make_pki().write(directory)
        if server:
            certificate = {"certificateFile": str(cert_file), "keyFile": str(key_file)}
            stream["tlsSettings"] = {"certificates": [certificate]}
        elif trust_ca:
            ca = {"certificateFile": str(ca_file), "usage": "verify"}
            stream["tlsSettings"] = {"serverName": SERVER_NAME, "certificates": [ca]}
        else:
            stream["tlsSettings"] = {"serverName": SERVER_NAME, "allowInsecure": True}
    return stream


def vtrio_settings(transport: str, *, server: bool, **ws: Any) -> Any:
    network, security = TRANSPORTS[transport]
    tls = server_tls() if server else client_tls()
    settings = stream_settings(network, security, tls, path=WS_PATH, **ws)
    if transport in HTTP_HEADER:
        settings = dataclasses.replace(settings, http_header=http_header_settings())
    return settings


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


@pytest.mark.parametrize("transport", V2RAY_TRANSPORTS)
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


@pytest.mark.parametrize("transport", V2RAY_TRANSPORTS)
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


def trojan_prefix(port: int) -> bytes:
    """Trojan CONNECT to 127.0.0.1:port (hex SHA-224 of the password, CRLF, ...)."""
    key = hashlib.sha224(TROJAN_PASSWORD.encode()).hexdigest().encode()
    address = socket.inet_aton(peers.LOOPBACK) + port.to_bytes(2, "big")
    return key + b"\r\n" + b"\x01\x01" + address + b"\r\n"


def sing_box_transport(
    transport: str, early: bool, *, server: bool, directory: Path
) -> peers.JSON:
    """The ``transport`` and ``tls`` members of a sing-box trojan in/outbound."""
    network, security = TRANSPORTS[transport]
    members: peers.JSON = {}
    if network == "httpupgrade":
        members["transport"] = {"type": "httpupgrade", "path": WS_PATH}
    if network == "grpc":
        members["transport"] = {"type": "grpc", "service_name": GRPC_SERVICE}
    if network == "h2":
        members["transport"] = {"type": "http", "host": H2_HOSTS, "path": H2_PATH}
    if network == "ws":
        members["transport"] = {"type": "ws", "path": WS_PATH}
        if early:
            members["transport"] |= {
                "max_early_data": SING_BOX_EARLY_DATA,
                "early_data_header_name": "Sec-WebSocket-Protocol",
            }
    if security == "tls":
        if server:
            _, cert_file, key_file = make_pki().write(directory)
            members["tls"] = {
                "enabled": True,
                "certificate_path": str(cert_file),
                "key_path": str(key_file),
            }
        else:
            members["tls"] = {
                "enabled": True,
                "server_name": SERVER_NAME,
                "insecure": True,
            }
    return members


SING_BOX_CASES = [
    pytest.param("ws", False, id="ws"),
    pytest.param("tls", False, id="tls"),
    pytest.param("ws+tls", False, id="ws+tls"),
    pytest.param("ws", True, id="ws-early"),
    pytest.param("ws+tls", True, id="ws+tls-early"),
    pytest.param("httpupgrade", False, id="httpupgrade"),
    pytest.param("httpupgrade+tls", False, id="httpupgrade+tls"),
]


# sing-box 1.14's HTTPUpgrade server now and then loses the bytes a client
# sends right after its 101 ("bad request size"), so vtrio dials it only over
# the WebSocket and TLS transports here.
SING_BOX_SERVER_CASES = [c for c in SING_BOX_CASES if "httpupgrade" not in str(c.id)]


@pytest.mark.parametrize(("transport", "early"), SING_BOX_SERVER_CASES)
async def test_vtrio_dials_sing_box_transport(
    transport: str, early: bool, tmp_path: Path
) -> None:
    peer = peers.require_peer("sing-box", SING_BOX_VERSION)
    data = random.Random(transport).randbytes(PAYLOAD_SIZE)
    (port,) = peers.free_ports(1)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            target = await start_server(
                nursery, stream_settings("tcp", "none", server_tls()), echo, errors
            )
            inbound = {
                "type": "trojan",
                "tag": "trojan-in",
                "listen": peers.LOOPBACK,
                "listen_port": port,
                "users": [{"name": "user", "password": TROJAN_PASSWORD}],
            } | sing_box_transport(transport, early, server=True, directory=tmp_path)
            config = {
                "log": {"level": "debug"},
                "inbounds": [inbound],
                "outbounds": [{"type": "direct", "tag": "direct"}],
                "route": {"final": "direct"},
            }
            async with peers.open_peer(peer, "server", config, tmp_path, [port]):
                # Xray-style early data: empty header name, Sec-WebSocket-Protocol.
                early_data = SING_BOX_EARLY_DATA if early else 0
                settings = vtrio_settings(
                    transport, server=False, max_early_data=early_data
                )
                async with await dial(settings, peers.LOOPBACK, port) as stream:
                    await stream.send_all(trojan_prefix(target))
                    received = await exchange(stream, data)
            nursery.cancel_scope.cancel()
    assert_same(received, data)


@pytest.mark.parametrize(("transport", "early"), SING_BOX_CASES)
async def test_sing_box_dials_vtrio_transport(
    transport: str, early: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vtrio.net.transport.websocket")
    peer = peers.require_peer("sing-box", SING_BOX_VERSION)
    data = random.Random(transport).randbytes(PAYLOAD_SIZE)
    port, target = peers.free_ports(2)
    prefixes: list[bytes] = []

    async def trojan_echo(stream: trio.abc.Stream) -> None:
        prefix = b""
        while len(prefix) < len(trojan_prefix(target)):
            chunk = await stream.receive_some(len(trojan_prefix(target)) - len(prefix))
            if not chunk:
                return
            prefix += chunk
        prefixes.append(prefix)
        await echo(stream)

    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery,
                vtrio_settings(transport, server=True),
                trojan_echo,
                errors,
            )
            outbound = {
                "type": "trojan",
                "tag": "trojan-out",
                "server": peers.LOOPBACK,
                "server_port": server,
                "password": TROJAN_PASSWORD,
            } | sing_box_transport(transport, early, server=False, directory=tmp_path)
            config = {
                "log": {"level": "debug"},
                "inbounds": [
                    {
                        "type": "direct",
                        "tag": "in",
                        "listen": peers.LOOPBACK,
                        "listen_port": port,
                        "override_address": peers.LOOPBACK,
                        "override_port": target,
                    }
                ],
                "outbounds": [outbound],
                "route": {"final": "trojan-out"},
            }
            async with peers.open_peer(peer, "client", config, tmp_path, [port]):
                stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
                async with stream:
                    received = await exchange(stream, data)
            nursery.cancel_scope.cancel()
    assert_same(received, data)
    assert trojan_prefix(target) in prefixes
    if early:
        # sing-box sends its first write (the 68-byte prefix) in the upgrade.
        upgrades = [r.getMessage() for r in caplog.records if "upgrade:" in r.msg]
        assert upgrades
        assert upgrades[-1].endswith(f", {len(prefixes[0])} bytes of early data")


# --- VMess chains -------------------------------------------------------------

VTRIO = "vtrio"
ACCOUNT = peers.Account(
    uuid="0f4c3a52-8a8b-4c51-9d54-9a77e3b6f2d1", security="aes-128-gcm"
)


async def start_side(
    stack: AsyncExitStack,
    who: str,
    route: peers.Route,
    *,
    server: bool,
    transport: str,
    early: bool,
    directory: Path,
) -> None:
    """Run one side of a VMess chain with ``transport`` on its VMess hop."""
    role = "server" if server else "client"
    if who == "sing-box":
        peer = peers.require_peer(who, SING_BOX_VERSION)
        config = (
            peers.sing_box_server_config if server else peers.sing_box_client_config
        )([route])
        members = sing_box_transport(
            transport, early, server=server, directory=directory
        )
        (config["inbounds"] if server else config["outbounds"])[0] |= members
    else:
        if server:
            make = (
                peers.xray_server_config if who == "xray" else peers.v2ray_server_config
            )
        else:
            make = peers.v2ray_client_config
        config = make([route])
        # v2ray 4.34 has no early data; vtrio reads v2fly's 4.37 spelling.
        # Xray 26 refuses allowInsecure: its client trusts the test CA.
        stream = v2ray_stream(
            transport,
            server=server,
            directory=directory,
            early=early and who == VTRIO,
            trust_ca=who in (VTRIO, "xray"),
        )
        (config["inbounds"] if server else config["outbounds"])[0]["streamSettings"] = (
            stream
        )
    if who == VTRIO:
        import vtrio.config
        import vtrio.server

        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        await nursery.start(vtrio.server.run, vtrio.config.loads(json.dumps(config)))
        return
    peer = peers.require_peer(who, PEER_VERSIONS[who])
    await stack.enter_async_context(
        peers.open_peer(peer, role, config, directory, [route.port])
    )


async def run_vmess_chain(
    client: str, server: str, transport: str, early: bool, directory: Path
) -> None:
    """SOCKS5 -> client ==VMess over transport==> server -> echo, checksummed."""
    from tests.support import echo as echo_target
    from tests.support import socks5

    data = random.Random(f"{client}{server}{transport}").randbytes(PAYLOAD_SIZE)
    socks_port, vmess_port = peers.free_ports(2)
    server_route = peers.Route(port=vmess_port, account=ACCOUNT)
    client_route = peers.Route(port=socks_port, account=ACCOUNT, server_port=vmess_port)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(echo_target.serve_tcp_echo, peers.LOOPBACK)
            async with AsyncExitStack() as stack:
                side = functools.partial(
                    start_side,
                    stack,
                    transport=transport,
                    early=early,
                    directory=directory,
                )
                await side(server, server_route, server=True)
                await side(client, client_route, server=False)
                stream = await socks5.open_connect(
                    peers.LOOPBACK, socks_port, peers.LOOPBACK, target
                )
                async with stream:
                    received = await exchange(stream, data)
            nursery.cancel_scope.cancel()
    assert_same(received, data)


def vmess_cases() -> list[Any]:
    cases = []
    for peer, early_too, transports in (
        ("v2ray", False, V2RAY_VMESS_TRANSPORTS),
        ("sing-box", True, SING_BOX_TRANSPORTS),
        ("xray", False, XRAY_TRANSPORTS),
    ):
        for transport in transports:
            earlies = [False, True] if early_too and "ws" in transport else [False]
            for early in earlies:
                suffix = f"[{transport}{'-early' if early else ''}]"
                label = f"{peer}-{PEER_VERSIONS[peer]}"
                cases.append(
                    pytest.param(
                        peer,
                        VTRIO,
                        transport,
                        early,
                        id=f"{label}-client->vtrio-server{suffix}",
                    )
                )
                if peer == "sing-box" and "httpupgrade" in transport:
                    continue  # see SING_BOX_SERVER_CASES
                cases.append(
                    pytest.param(
                        VTRIO,
                        peer,
                        transport,
                        early,
                        id=f"vtrio-client->{label}-server{suffix}",
                    )
                )
    return cases


@pytest.mark.parametrize(("client", "server", "transport", "early"), vmess_cases())
async def test_vmess_over_transport(
    client: str, server: str, transport: str, early: bool, tmp_path: Path
) -> None:
    await run_vmess_chain(client, server, transport, early, tmp_path)


# --- what a prober sees ---------------------------------------------------------

HTTP_PROBES = {
    "wrong-path": b"GET /elsewhere HTTP/1.1\r\nHost: cdn.example.com\r\n\r\n",
    "not-http": b"\x05\x01\x00\x03\x00\n\x00\x01",
    "bad-vmess": b"GET /obfs HTTP/1.1\r\n\r\n" + random.Random(3).randbytes(64),
    "head-only": b"GET /video/stream.mp4 HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def probe_answer(port: int, data: bytes) -> bytes:
    """The bytes a server sends to ``data`` (then EOF) before it closes, with
    the Date header, the one part that differs by the second, taken out."""
    stream = await trio.open_tcp_stream(peers.LOOPBACK, port)
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        received = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some():
                received += chunk
    return re.sub(rb"\r\nDate: [^\r]*", b"", received)


async def test_a_prober_gets_the_same_bytes_from_vtrio_and_v2ray(
    tmp_path: Path,
) -> None:
    """A VMess server behind the "http" header, probed the same way: a wrong
    path, bytes that are not HTTP, a right path with a failed VMess header,
    and a head alone."""
    answers: dict[str, dict[str, bytes]] = {}
    for who in ("v2ray", VTRIO):
        (port,) = peers.free_ports(1)
        route = peers.Route(port=port, account=ACCOUNT)
        with trio.fail_after(TIMEOUT):
            async with AsyncExitStack() as stack:
                await start_side(
                    stack,
                    who,
                    route,
                    server=True,
                    transport="http",
                    early=False,
                    directory=tmp_path,
                )
                answers[who] = {
                    name: await probe_answer(port, data)
                    for name, data in HTTP_PROBES.items()
                }
    assert answers[VTRIO] == answers["v2ray"]
    refused = (
        b"Connection: close\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
    )
    assert answers[VTRIO] == {
        "wrong-path": b"HTTP/1.1 404 Not Found\r\n" + refused,
        "not-http": b"HTTP/1.1 400 Bad Request\r\n" + refused,
        "bad-vmess": b"HTTP/1.1 400 Bad Request\r\n" + refused,
        "head-only": b"HTTP/1.1 400 Bad Request\r\n" + refused,
    }
