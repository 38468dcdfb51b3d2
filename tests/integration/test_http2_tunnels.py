"""vtrio's gRPC and HTTP/2 transports end to end, vtrio client to vtrio
server (v2ray and sing-box are the peers in
``tests/interop/test_transport_interop.py``).

Tunnels share one HTTP/2 connection: a counting forwarder between the two
proxies shows how many TCP connections the client made, and lets a test cut
one. Every payload is checksummed at the far end.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os

import pytest
import trio

from tests.integration.test_transport import client_tls, server_tls
from tests.interop.test_mux_interop import (
    USER,
    concurrent_flows_then_one,
    cut_connection_then_tunnel,
    mux_client_config,
    serve_counting_forwarder,
    udp_exchange,
    vtrio_server_config,
)
from tests.support.echo import serve_tcp_echo, serve_udp_echo
from tests.support.socks5 import receive_exactly
from vtrio import server
from vtrio.config import model
from vtrio.net.transport import dial
from vtrio.net.transport.h2 import H2Client, flavor_of
from vtrio.net.vmess_stream import VMessStream
from vtrio.protocol.instruction import Command, Request

LOOPBACK = "127.0.0.1"
SERVICE = "vtrio.Tunnel"
H2 = model.H2Settings(hosts=("a.example", "b.example"), path="/tunnel")
NETWORKS = ["grpc", "h2"]


def http2_stream(
    network: str, security: str, *, server_side: bool
) -> model.StreamSettings:
    tls = server_tls() if server_side else client_tls()
    return model.StreamSettings(
        network="grpc" if network == "grpc" else "h2",
        security="tls" if security == "tls" else "none",
        tls=dataclasses.replace(tls, alpn=("h2",)),
        grpc=model.GrpcSettings(service_name=SERVICE),
        h2=H2,
    )


def server_config(network: str, security: str) -> model.Config:
    config = vtrio_server_config()
    inbound = dataclasses.replace(
        config.inbounds[0], stream=http2_stream(network, security, server_side=True)
    )
    return dataclasses.replace(config, inbounds=(inbound,))


def client_config(server_port: int, network: str, security: str) -> model.Config:
    config = mux_client_config(server_port, 0)  # 0: no Mux
    outbound = dataclasses.replace(
        config.outbounds[0],
        stream=http2_stream(network, security, server_side=False),
    )
    return dataclasses.replace(config, outbounds=(outbound,))


def running_client(settings: model.StreamSettings, nursery: trio.Nursery) -> H2Client:
    client = H2Client(
        flavor_of(settings), lambda host, port: dial(settings, host, port)
    )
    client.run_in(nursery)
    return client


async def echo_over(
    tunnel: trio.abc.HalfCloseableStream, echo_port: int, data: bytes
) -> bytes:
    """What the echo server sends back for ``data`` sent through a VMess
    tunnel on ``tunnel`` (closed after)."""
    vmess = VMessStream.client(
        tunnel,
        model.VMessUser(USER),
        Request(Command.TCP, ipaddress.IPv4Address(LOOPBACK), echo_port),
    )
    await vmess.send_all(data)
    echoed = await receive_exactly(vmess, len(data))
    await vmess.aclose()
    return echoed


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("security", ["none", "tls"])
async def test_concurrent_tunnels_share_one_connection(
    network: str, security: str
) -> None:
    # Larger than the initial 64 KiB windows: flow control must move them.
    sizes = [1, 1000, 16384, 70_000, 300_000, 1_200_000, 65536, 5]
    accepted: list[trio.CancelScope] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, server_config(network, security))
            forwarder = await nursery.start(
                serve_counting_forwarder, bound["vmess-in"][0][1], accepted
            )
            bound = await nursery.start(
                server.run, client_config(forwarder, network, security)
            )
            await concurrent_flows_then_one(bound["socks-in"][0][1], echo_port, sizes)
            nursery.cancel_scope.cancel()
    assert len(accepted) == 1  # the later tunnel too


@pytest.mark.parametrize("network", NETWORKS)
async def test_udp_tunnels_ride_the_connection_too(network: str) -> None:
    accepted: list[trio.CancelScope] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_ports = [
                await nursery.start(serve_udp_echo, LOOPBACK) for _ in range(2)
            ]
            bound = await nursery.start(server.run, server_config(network, "none"))
            forwarder = await nursery.start(
                serve_counting_forwarder, bound["vmess-in"][0][1], accepted
            )
            config = client_config(forwarder, network, "none")
            socks = dataclasses.replace(
                config.inbounds[0], settings=model.SocksInboundSettings(udp=True)
            )
            bound = await nursery.start(
                server.run, dataclasses.replace(config, inbounds=(socks,))
            )
            sent, received = await udp_exchange(bound["socks-in"][0][1], echo_ports, 6)
            nursery.cancel_scope.cancel()
    assert {digest: (LOOPBACK, port) for digest, port in sent.items()} == received
    assert len(accepted) == 1


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("network", NETWORKS)
async def test_a_cut_connection_breaks_its_tunnels_and_the_next_opens_another(
    network: str, reset: bool
) -> None:
    """Closed or reset under its tunnels, a shared connection ends alone: the
    client goes on, and the next tunnel opens another."""
    client = functools.partial(client_config, network=network, security="none")
    server_side = server_config(network, "none")
    assert await cut_connection_then_tunnel(server_side, client, reset=reset) == 2


@pytest.mark.parametrize("network", NETWORKS)
async def test_a_bad_tunnel_leaves_the_others_on_its_connection_running(
    network: str,
) -> None:
    settings = http2_stream(network, "none", server_side=False)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, server_config(network, "none"))
            port = bound["vmess-in"][0][1]
            client = running_client(settings, nursery)
            bad = await client.open(LOOPBACK, port)
            await bad.send_all(os.urandom(200))  # no VMess header: refused
            good = await client.open(LOOPBACK, port)
            assert bad.stream_id != good.stream_id  # the same connection
            assert await echo_over(good, echo_port, b"still here") == b"still here"
            await bad.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("network", "grpc", "h2"),
    [
        ("grpc", model.GrpcSettings(service_name="elsewhere"), H2),
        ("h2", model.GrpcSettings(), dataclasses.replace(H2, path="/elsewhere")),
        ("h2", model.GrpcSettings(), dataclasses.replace(H2, hosts=("c.example",))),
    ],
    ids=["grpc-service", "h2-path", "h2-host"],
)
async def test_a_request_not_for_the_server_gets_404(
    network: str, grpc: model.GrpcSettings, h2: model.H2Settings
) -> None:
    settings = dataclasses.replace(
        http2_stream(network, "none", server_side=False), grpc=grpc, h2=h2
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, server_config(network, "none"))
            port = bound["vmess-in"][0][1]
            call = await running_client(settings, nursery).open(LOOPBACK, port)
            with pytest.raises(trio.BrokenResourceError, match="HTTP 404"):
                await call.receive_some()
            nursery.cancel_scope.cancel()


async def test_an_h2_server_serves_paths_below_its_own_like_v2ray() -> None:
    settings = dataclasses.replace(
        http2_stream("h2", "none", server_side=False),
        h2=dataclasses.replace(H2, path="/tunnel/deeper", hosts=("b.example",)),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, server_config("h2", "none"))
            port = bound["vmess-in"][0][1]
            call = await running_client(settings, nursery).open(LOOPBACK, port)
            assert await echo_over(call, echo_port, b"below") == b"below"
            nursery.cancel_scope.cancel()


async def test_plain_http_gets_no_http_answer() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, server_config("grpc", "none"))
            stream = await trio.open_tcp_stream(LOOPBACK, bound["vmess-in"][0][1])
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                received = b""
                while chunk := await stream.receive_some():
                    received += chunk
            assert b"HTTP/1.1" not in received  # a GOAWAY, then the close
            nursery.cancel_scope.cancel()
