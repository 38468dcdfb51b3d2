"""Real clients' UDP into a vtrio server that sniffs QUIC: v2ray 4.34's VMess
UDP and Mux UDP, sing-box 1.14's XUDP and Xray 26's VMess UDP and XUDP, each
entered through the peer's
SOCKS UDP ASSOCIATE. A first flight for a blocked name is dropped, one for
another name reaches the echo whole and in order."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
import trio

from tests.integration.test_quic_sniffing import BLOCKED, echoed, quic_first_flight
from tests.interop.peers import (
    LOOPBACK,
    Account,
    Route,
    client_config,
    free_ports,
    open_peer,
    require_peer,
)
from tests.interop.test_mux_interop import USER, vtrio_server_config
from tests.support.echo import serve_udp_echo
from tests.support.socks5 import open_udp_associate
from vtrio import server
from vtrio.config import model

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop


def sniffing_server() -> model.Config:
    base = vtrio_server_config()
    (vmess_in,) = base.inbounds
    return dataclasses.replace(
        base,
        inbounds=(
            dataclasses.replace(
                vmess_in, sniffing=model.Sniffing(("quic",), route_only=True)
            ),
        ),
        outbounds=(
            *base.outbounds,
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(rules=(BLOCKED,)),
    )


@pytest.mark.parametrize(
    ("peer_name", "version", "packet_encoding", "mux"),
    [
        ("v2ray", "4.34", "", False),  # VMess UDP, a connection per flow
        ("v2ray", "4.34", "", True),  # Mux UDP, a sub-session per destination
        ("sing-box", "1.14", "xudp", False),  # XUDP
        ("xray", "26.10", "", False),  # VMess UDP
        ("xray", "26.10", "", True),  # XUDP on its Mux
    ],
    ids=[
        "v2ray-vmess-udp",
        "v2ray-mux",
        "sing-box-xudp",
        "xray-vmess-udp",
        "xray-xudp",
    ],
)
async def test_a_real_clients_quic_flows_are_routed_by_their_names(
    tmp_path: Path, peer_name: str, version: str, packet_encoding: str, mux: bool
) -> None:
    peer = require_peer(peer_name, version)
    (socks_port,) = free_ports(1)
    account = Account(str(USER), packet_encoding=packet_encoding)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_udp_echo, LOOPBACK)
            bound = await nursery.start(server.run, sniffing_server())
            route = Route(socks_port, account, server_port=bound["vmess-in"][0][1])
            config = client_config(peer, [route])
            if mux:
                config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):
                async with await open_udp_associate(LOOPBACK, socks_port) as udp:
                    flight = quic_first_flight("blocked.test")
                    assert await echoed(udp, LOOPBACK, echo, flight) == []
                async with await open_udp_associate(LOOPBACK, socks_port) as udp:
                    flight = quic_first_flight("allowed.test")
                    assert await echoed(udp, LOOPBACK, echo, flight) == [
                        (LOOPBACK, echo, datagram) for datagram in flight
                    ]
            nursery.cancel_scope.cancel()
