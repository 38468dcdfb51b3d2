"""Mux.Cool and XUDP from real clients into vtrio's serve_mux.

v2ray 4.34 with ``"mux": {"enabled": true, "concurrency": 8}`` carries several
concurrent TCP flows through one VMess connection; sing-box 1.14 with
``packet_encoding: "xudp"`` carries UDP as an XUDP session. Both enter through
their SOCKS inbounds, and every byte is checksummed at the far end.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct
import time
import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from tests.interop.peers import (
    LOOPBACK,
    Account,
    Route,
    client_config,
    free_ports,
    open_peer,
    require_peer,
)
from tests.net.test_mux_helpers import (
    VMessTestServer,
    receive_exactly,
    socks_request,
    tcp_echo,
    udp_echo,
)
from vtrio.config.model import VMessUser
from vtrio.protocol.instruction import Command
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")


def mux_server() -> VMessTestServer:
    return VMessTestServer(UserValidator([VMessUser(USER)], now=int(time.time())))


def mux_connections(server: VMessTestServer) -> int:
    assert all(header.command is Command.MUX for header in server.accepted)
    return len(server.accepted)


def payload_of(flow: int, size: int) -> bytes:
    return hashlib.shake_256(f"flow {flow}".encode()).digest(size)


async def echo_flow(socks_port: int, echo_port: int, flow: int, size: int) -> bytes:
    """One TCP flow through SOCKS; returns the sha256 of what came back."""
    stream = await trio.open_tcp_stream(LOOPBACK, socks_port)
    async with stream:
        await socks_request(stream, 1, LOOPBACK, echo_port)
        data = payload_of(flow, size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, data)
            echoed = await receive_exactly(stream, size)
    return hashlib.sha256(echoed).digest()


async def test_v2ray_mux_client_concurrent_tcp_flows(tmp_path: Path) -> None:
    peer = require_peer("v2ray", "4.34")
    socks_port, vmess_port = free_ports(2)
    config = client_config(
        peer, [Route(socks_port, Account(str(USER)), server_port=vmess_port)]
    )
    config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
    server = mux_server()
    sizes = [1, 1000, 8192, 8193, 100_000, 300_000, 65536, 5]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, tcp_echo, 0, host=LOOPBACK)
            )
            echo_port = echo_listeners[0].socket.getsockname()[1]
            await nursery.start(
                functools.partial(
                    trio.serve_tcp, server.handle, vmess_port, host=LOOPBACK
                )
            )
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):
                digests: dict[int, bytes] = {}

                async def run(flow: int, size: int) -> None:
                    digests[flow] = await echo_flow(socks_port, echo_port, flow, size)

                async with trio.open_nursery() as flows:
                    for flow, size in enumerate(sizes):
                        flows.start_soon(run, flow, size)
            nursery.cancel_scope.cancel()
    for flow, size in enumerate(sizes):
        assert digests[flow] == hashlib.sha256(payload_of(flow, size)).digest()
    # Eight flows, at most eight per Mux connection: v2ray used one or two.
    assert 1 <= mux_connections(server) <= 2
    assert server.dispatch.tcp_dials == len(sizes)


async def udp_exchange(
    socks_port: int, echo_ports: list[int], count: int
) -> tuple[dict[bytes, int], dict[bytes, tuple[str, int]]]:
    """Datagrams through SOCKS UDP ASSOCIATE, alternating between echo ports.

    Returns:
        sha256 of each payload sent -> its echo port, and sha256 of each reply
        -> the address SOCKS said it came from.
    """
    control = await trio.open_tcp_stream(LOOPBACK, socks_port)
    async with control:
        relay = await socks_request(control, 3, "0.0.0.0", 0)
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind((LOOPBACK, 0))
            sent: dict[bytes, int] = {}
            received: dict[bytes, tuple[str, int]] = {}
            for index in range(count):
                payload = payload_of(index, 100 + 50 * index)
                target = echo_ports[index % len(echo_ports)]
                header = b"\x00\x00\x00\x01" + ipaddress.IPv4Address(LOOPBACK).packed
                await sock.sendto(header + struct.pack(">H", target) + payload, relay)
                sent[hashlib.sha256(payload).digest()] = target
                # One at a time: UDP through a proxy may drop under a burst.
                reply, _ = await sock.recvfrom(65536)
                assert reply[:4] == b"\x00\x00\x00\x01", reply[:10]
                source = str(ipaddress.IPv4Address(reply[4:8]))
                port = struct.unpack(">H", reply[8:10])[0]
                received[hashlib.sha256(reply[10:]).digest()] = (source, port)
    return sent, received


@pytest.mark.parametrize(
    ("peer_name", "version", "packet_encoding", "udp_sessions"),
    [
        # XUDP: one sub-session carries every destination.
        ("sing-box", "1.14", "xudp", 1),
        # Plain Mux UDP: v2ray opens a sub-session per destination.
        ("v2ray", "4.34", "", 2),
    ],
)
async def test_udp_datagrams_through_mux(
    tmp_path: Path,
    peer_name: str,
    version: str,
    packet_encoding: str,
    udp_sessions: int,
) -> None:
    peer = require_peer(peer_name, version)
    socks_port, vmess_port = free_ports(2)
    account = Account(str(USER), packet_encoding=packet_encoding)
    config = client_config(peer, [Route(socks_port, account, server_port=vmess_port)])
    if peer.name == "v2ray":
        config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
    server = mux_server()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echoes = [await nursery.start(udp_echo) for _ in range(2)]
            await nursery.start(
                functools.partial(
                    trio.serve_tcp, server.handle, vmess_port, host=LOOPBACK
                )
            )
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):
                sent, received = await udp_exchange(socks_port, echoes, 20)
            nursery.cancel_scope.cancel()
    assert len(sent) == 20
    assert received == {digest: (LOOPBACK, port) for digest, port in sent.items()}
    assert mux_connections(server) == 1
    assert server.dispatch.udp_opens == udp_sessions
