"""sendThrough: connections leave from the configured local address, for
freedom's TCP and UDP and for a VMess outbound's connection to its server;
a network spreads them over its addresses (Xray)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

import trio

from tests.hardening.branches import SERVER_USERS
from tests.support.hardening import running, server_config
from tests.support.socks5 import (
    open_connect,
    open_udp_associate,
    socks_inbound,
)
from vtrio import server
from vtrio.config import model

if TYPE_CHECKING:
    import pytest

LOOPBACK = "127.0.0.1"


async def serve_peer_names(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Tell every TCP client the address it came from, then close."""

    async def tell(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(str(stream.socket.getpeername()[0]).encode())

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(tell, listeners)


async def serve_udp_peer_names(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((LOOPBACK, 0))
        task_status.started(sock.getsockname()[1])
        while True:
            _, sender = await sock.recvfrom(2048)
            await sock.sendto(str(sender[0]).encode(), sender)


def freedom_config(send_through: str) -> model.Config:
    return model.Config(
        inbounds=(socks_inbound(model.SocksInboundSettings(udp=True)),),
        outbounds=(
            model.Outbound(
                "direct",
                "freedom",
                model.FreedomSettings(),
                send_through=ipaddress.ip_network(send_through),
            ),
        ),
    )


async def peer_name_through(proxy: int, target: int) -> str:
    stream = await open_connect(LOOPBACK, proxy, LOOPBACK, target)
    async with stream:
        received = b""
        while data := await stream.receive_some(64):
            received += data
    return received.decode()


async def test_freedom_tcp_and_udp_leave_from_the_address() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            tcp_target = await nursery.start(serve_peer_names)
            udp_target = await nursery.start(serve_udp_peer_names)
            bound = await nursery.start(server.run, freedom_config("127.0.0.2"))
            proxy = bound["socks-in"][0][1]
            assert await peer_name_through(proxy, tcp_target) == "127.0.0.2"
            async with await open_udp_associate(LOOPBACK, proxy) as association:
                await association.send_to(LOOPBACK, udp_target, b"who")
                _, _, payload = await association.receive_from()
            assert payload == b"127.0.0.2"
            nursery.cancel_scope.cancel()


async def test_a_network_spreads_connections_over_its_addresses() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_peer_names)
            bound = await nursery.start(server.run, freedom_config("127.0.0.0/29"))
            proxy = bound["socks-in"][0][1]
            seen = {await peer_name_through(proxy, target) for _ in range(24)}
            nursery.cancel_scope.cancel()
    network = ipaddress.ip_network("127.0.0.0/29")
    assert all(ipaddress.ip_address(name) in network for name in seen)
    assert len(seen) > 1  # 24 draws from 8 addresses: one alone has odds 8**-23


async def test_a_vmess_outbound_reaches_its_server_from_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    (user,) = SERVER_USERS[:1]
    with trio.fail_after(20):
        async with running(server_config(SERVER_USERS)) as (server_port, nursery):
            echo = await nursery.start(serve_peer_names)
            client = model.Config(
                inbounds=(socks_inbound(),),
                outbounds=(
                    model.Outbound(
                        "proxy",
                        "vmess",
                        model.VMessOutboundSettings(
                            (model.VMessServer(LOOPBACK, server_port, (user,)),)
                        ),
                        send_through=ipaddress.ip_network("127.0.0.3"),
                    ),
                ),
            )
            bound = await nursery.start(server.run, client)
            proxy = bound["socks-in"][0][1]
            # The target sees the server's own address; the server saw ours.
            assert await peer_name_through(proxy, echo) == LOOPBACK
    lines = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    assert any(line.startswith("from 127.0.0.3:") for line in lines), lines
