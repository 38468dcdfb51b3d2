"""The routing's domainStrategy through a running server: with IPIfNonMatch
or IPOnDemand a domain that resolves to a blocked network is blocked, which
AsIs lets through (the usual guard of a server's own loopback and LAN)."""

from __future__ import annotations

import ipaddress
from typing import Literal

import pytest
import trio

from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import (
    SocksError,
    open_connect,
    receive_exactly,
    socks_inbound,
)
from vtrio import server
from vtrio.config import model

LOOPBACK = "127.0.0.1"
Strategy = Literal["AsIs", "IPIfNonMatch", "IPOnDemand"]


def config(strategy: Strategy, *, allow_localhost: bool) -> model.Config:
    """Loopback blocked by IP, then perhaps ``localhost`` allowed by name."""
    block = model.RoutingRule("block", ips=(ipaddress.ip_network("127.0.0.0/8"),))
    allow = model.RoutingRule(
        "direct", domains=(model.DomainMatcher("full", "localhost"),)
    )
    rules = (block, allow) if allow_localhost else (block,)
    return model.Config(
        inbounds=(socks_inbound(),),
        outbounds=(
            model.Outbound("direct", "freedom", model.FreedomSettings()),
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(domain_strategy=strategy, rules=rules),
    )


async def reaches(proxy: int, host: str, port: int) -> bool:
    return await reaches_via(LOOPBACK, proxy, host, port)


async def reaches_via(proxy_host: str, proxy: int, host: str, port: int) -> bool:
    try:
        stream = await open_connect(proxy_host, proxy, host, port)
    except SocksError:
        return False
    async with stream:
        await stream.send_all(b"ping")
        try:
            return await receive_exactly(stream, 4) == b"ping"
        except (SocksError, trio.BrokenResourceError):
            return False


@pytest.mark.parametrize(
    ("strategy", "allow_localhost", "expected"),
    [
        ("AsIs", False, True),  # the IP rule never sees the domain
        ("IPIfNonMatch", False, False),  # no rule took the name: resolved, blocked
        ("IPOnDemand", False, False),
        ("AsIs", True, True),
        ("IPIfNonMatch", True, True),  # the name rule matched in the first pass
        ("IPOnDemand", True, False),  # resolved when the IP rule, first, is met
    ],
)
async def test_domain_strategy_decides_whether_ip_rules_see_a_domain(
    strategy: Strategy, allow_localhost: bool, expected: bool
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            running = config(strategy, allow_localhost=allow_localhost)
            bound = await nursery.start(server.run, running)
            proxy = bound["socks-in"][0][1]
            assert await reaches(proxy, "localhost", echo) is expected
            # An IP destination meets the IP rule whatever the strategy.
            assert await reaches(proxy, LOOPBACK, echo) is False
            nursery.cancel_scope.cancel()


async def test_local_ip_and_port_rules_see_where_the_client_came_in() -> None:
    """Xray's localIP / localPort: two socks inbounds, one rule each way."""
    config = model.Config(
        inbounds=(
            socks_inbound(tag="a"),
            socks_inbound(tag="b", listen="127.0.0.2"),
        ),
        outbounds=(
            model.Outbound("direct", "freedom", model.FreedomSettings()),
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(
            rules=(
                model.RoutingRule(
                    "block", local_ips=(ipaddress.ip_network("127.0.0.2/32"),)
                ),
            )
        ),
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, config)
            assert await reaches(bound["a"][0][1], LOOPBACK, echo)
            stream_b = bound["b"][0][1]
            assert not await reaches_via("127.0.0.2", stream_b, LOOPBACK, echo)
            nursery.cancel_scope.cancel()
