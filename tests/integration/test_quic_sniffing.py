"""QUIC sniffing on UDP flows through a running server: SOCKS UDP ASSOCIATE
and a vtrio client's UDP over VMess into a sniffing server, with the
ClientHello in one datagram or two, routed by its server name and by the
``quic`` protocol, and sent to that name with ``destOverride``."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from tests.integration.test_chain import client_config
from tests.integration.test_chain import server_config as vmess_server_config
from tests.protocol.test_quic import PADDING_EXTENSION
from tests.protocol.test_sniff import hand_built_hello
from tests.support.echo import serve_udp_echo
from tests.support.quic import client_initial, crypto_frame
from tests.support.socks5 import UdpAssociation, open_udp_associate, socks_inbound
from vtrio import server
from vtrio.config import model

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

LOOPBACK = "127.0.0.1"
# Nothing listens there on the echo's port: only an override reaches the echo.
ELSEWHERE = "127.0.0.3"
BLOCKED = model.RoutingRule(
    "block", domains=(model.DomainMatcher("full", "blocked.test"),)
)
NO_QUIC = model.RoutingRule("block", protocols=("quic",))
# A datagram that is not QUIC (a DNS query for example.com).
DNS_QUERY = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
# How long a dropped datagram is waited for.
SILENCE = 0.6


def quic_first_flight(name: str, *, datagrams: int = 2) -> list[bytes]:
    """A QUIC client's Initial datagrams whose ClientHello names ``name``:
    one of about 1 700 bytes in two datagrams, or a small one in one."""
    if datagrams == 1:
        hello = hand_built_hello([(0, name.encode())])[5:]
        return [client_initial(crypto_frame(0, hello))]
    hello = hand_built_hello([(0, name.encode())], before=PADDING_EXTENSION)[5:]
    return [
        client_initial(crypto_frame(0, hello[:1000]), number=0),
        client_initial(crypto_frame(1000, hello[1000:]), number=1),
    ]


def sniffing_server(sniffing: model.Sniffing, rule: model.RoutingRule) -> model.Config:
    return model.Config(
        inbounds=(
            socks_inbound(model.SocksInboundSettings(udp=True), sniffing=sniffing),
        ),
        outbounds=(
            # UseIPv4: an overridden "localhost" is the echo's 127.0.0.1.
            model.Outbound("direct", "freedom", model.FreedomSettings("UseIPv4")),
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(rules=(rule,)),
    )


@asynccontextmanager
async def sniffing_socks(
    sniffing: model.Sniffing, rule: model.RoutingRule
) -> AsyncIterator[tuple[int, int]]:
    """A sniffing SOCKS server and a UDP echo: their ports."""
    async with trio.open_nursery() as nursery:
        echo = await nursery.start(serve_udp_echo, LOOPBACK)
        bound = await nursery.start(server.run, sniffing_server(sniffing, rule))
        yield bound["socks-in"][0][1], echo
        nursery.cancel_scope.cancel()


async def echoed(
    udp: UdpAssociation, host: str, port: int, datagrams: list[bytes]
) -> list[tuple[str, int, bytes]]:
    """Send ``datagrams`` to ``host:port`` through the association; what
    came back within the silence after the last."""
    for datagram in datagrams:
        await udp.send_to(host, port, datagram)
    back: list[tuple[str, int, bytes]] = []
    with trio.move_on_after(SILENCE) as waiting:
        while len(back) < len(datagrams):
            back.append(await udp.receive_from())
    if not waiting.cancelled_caught:
        with trio.move_on_after(0.1):  # nothing more comes
            back.append(await udp.receive_from())
    return back


@pytest.mark.parametrize("datagrams", [1, 2])
async def test_quic_to_a_blocked_name_is_dropped_and_another_name_passes(
    datagrams: int,
) -> None:
    sniffing = model.Sniffing(("quic",), route_only=True)
    with trio.fail_after(20):
        async with sniffing_socks(sniffing, BLOCKED) as (proxy, echo):
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                flight = quic_first_flight("blocked.test", datagrams=datagrams)
                assert await echoed(udp, LOOPBACK, echo, flight) == []
                # The flow stays routed: later datagrams are dropped too.
                assert await echoed(udp, LOOPBACK, echo, [DNS_QUERY]) == []
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                flight = quic_first_flight("allowed.test", datagrams=datagrams)
                # Held while sniffed, then sent on in order.
                assert await echoed(udp, LOOPBACK, echo, flight) == [
                    (LOOPBACK, echo, datagram) for datagram in flight
                ]


async def test_a_quic_rule_drops_quic_and_not_other_udp() -> None:
    sniffing = model.Sniffing(("quic",), route_only=True)
    with trio.fail_after(20):
        async with sniffing_socks(sniffing, NO_QUIC) as (proxy, echo):
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                assert await echoed(udp, LOOPBACK, echo, [DNS_QUERY]) == [
                    (LOOPBACK, echo, DNS_QUERY)
                ]
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                flight = quic_first_flight("any.test", datagrams=1)
                assert await echoed(udp, LOOPBACK, echo, flight) == []


async def test_dest_override_sends_quic_to_its_server_name() -> None:
    sniffing = model.Sniffing(("quic",))
    with trio.fail_after(20):
        async with (
            sniffing_socks(sniffing, BLOCKED) as (proxy, echo),
            await open_udp_associate(LOOPBACK, proxy) as udp,
        ):
            flight = quic_first_flight("localhost")
            # Sent to ELSEWHERE, delivered to localhost; the answers come
            # back as from where the client sent them.
            assert await echoed(udp, ELSEWHERE, echo, flight) == [
                (ELSEWHERE, echo, datagram) for datagram in flight
            ]
            later = await echoed(udp, ELSEWHERE, echo, [b"after the hello"])
            assert later == [(ELSEWHERE, echo, b"after the hello")]


async def test_udp_over_vmess_is_sniffed_by_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A vtrio client carries the flow as VMess UDP; the server sniffs it."""
    base = vmess_server_config()
    (vmess_in,) = base.inbounds
    sniffing_in = dataclasses.replace(
        vmess_in, sniffing=model.Sniffing(("quic",), route_only=True)
    )
    config = dataclasses.replace(
        base,
        inbounds=(sniffing_in,),
        outbounds=(
            *base.outbounds,
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(rules=(BLOCKED,)),
    )
    caplog.set_level(logging.INFO, "vtrio.access")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_udp_echo, LOOPBACK)
            bound = await nursery.start(server.run, config)
            client = client_config(bound["vmess-in"][0][1], model.Security.AES_128_GCM)
            bound = await nursery.start(server.run, client)
            proxy = bound["socks-in"][0][1]
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                flight = quic_first_flight("blocked.test")
                assert await echoed(udp, LOOPBACK, echo, flight) == []
            async with await open_udp_associate(LOOPBACK, proxy) as udp:
                flight = quic_first_flight("allowed.test")
                assert len(await echoed(udp, LOOPBACK, echo, flight)) == 2
            nursery.cancel_scope.cancel()
    routed = [
        r.getMessage().split("[vmess-in -> ")[1].split("]")[0]
        for r in caplog.records
        if r.name == "vtrio.access" and "[vmess-in -> " in r.getMessage()
    ]
    assert sorted(routed) == ["block", "direct"]
