"""Balancers through a running server: a rule's balancerTag spreads tunnels
over the outbounds its selectors name (random or round robin), and the
fallback takes them when no outbound matches."""

from __future__ import annotations

from typing import Literal

import trio

from tests.support.echo import serve_tcp_source
from tests.support.socks5 import open_connect, socks_inbound
from vtrio import server
from vtrio.config import model

LOOPBACK = "127.0.0.1"


def balanced_config(
    ports: dict[str, int],
    strategy: Literal["random", "roundRobin"],
    selectors: tuple[str, ...] = ("proxy-",),
) -> model.Config:
    """One freedom outbound per target, each redirected to its own port."""
    outbounds = tuple(
        model.Outbound(
            tag,
            "freedom",
            model.FreedomSettings(redirect=f"{LOOPBACK}:{port}"),
        )
        for tag, port in ports.items()
    )
    balancer = model.Balancer(
        "spread", selectors, strategy=strategy, fallback_tag="fallback"
    )
    return model.Config(
        inbounds=(socks_inbound(),),
        outbounds=outbounds,
        routing=model.Routing(
            rules=(model.RoutingRule("", balancer_tag="spread", ports=((1, 65535),)),),
            balancers=(balancer,),
        ),
    )


async def answers(
    strategy: Literal["random", "roundRobin"],
    tunnels: int,
    selectors: tuple[str, ...] = ("proxy-",),
) -> list[bytes]:
    """The greeting each tunnel got: which outbound it went through."""
    got = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ports = {
                tag: await nursery.start(serve_tcp_source, LOOPBACK, tag.encode())
                for tag in ("fallback", "proxy-a", "proxy-b", "other")
            }
            config = balanced_config(ports, strategy, selectors)
            bound = await nursery.start(server.run, config)
            proxy = bound["socks-in"][0][1]
            for _ in range(tunnels):
                stream = await open_connect(LOOPBACK, proxy, "example.com", 80)
                async with stream:
                    received = b""
                    while data := await stream.receive_some(64):
                        received += data
                    got.append(received)
            nursery.cancel_scope.cancel()
    return got


async def test_round_robin_takes_the_selected_outbounds_in_turn() -> None:
    got = await answers("roundRobin", 6)
    assert got == [b"proxy-b", b"proxy-a"] * 3


async def test_random_uses_every_selected_outbound_and_no_other() -> None:
    got = await answers("random", 40)
    # Both are used (all 40 on one would have odds of 2**-39).
    assert set(got) == {b"proxy-a", b"proxy-b"}


async def test_the_fallback_takes_tunnels_when_no_outbound_is_selected() -> None:
    assert await answers("random", 2, selectors=("nothing-",)) == [b"fallback"] * 2
