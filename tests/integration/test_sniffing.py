"""Sniffing through a running server: a SOCKS client that dialled an IP is
sent to the name its first bytes carry, rules see the sniffed protocol, and
clients that wait for the server to speak first still get through."""

from __future__ import annotations

import ipaddress
import logging
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from tests.protocol.test_sniff import client_hello
from tests.support.echo import serve_tcp_echo, serve_tcp_source
from tests.support.socks5 import open_connect, receive_exactly, socks_inbound
from vtrio import server
from vtrio.config import model
from vtrio.net.sniffing import SNIFF_LIMIT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

LOOPBACK = "127.0.0.1"
# TEST-NET-1: nothing answers there, so only an override reaches the target.
UNREACHABLE = "192.0.2.1"
BITTORRENT = b"\x13BitTorrent protocol" + bytes(8) + bytes(40)


def sniffing_config(sniffing: model.Sniffing | None) -> model.Config:
    rules = (
        model.RoutingRule("block", protocols=("bittorrent",)),
        model.RoutingRule(
            "block", domains=(model.DomainMatcher("full", "blocked.test"),)
        ),
    )
    return model.Config(
        inbounds=(socks_inbound(sniffing=sniffing),),
        outbounds=(
            model.Outbound("direct", "freedom", model.FreedomSettings()),
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(rules=rules),
    )


@asynccontextmanager
async def echo_behind(
    sniffing: model.Sniffing | None,
) -> AsyncIterator[tuple[int, int]]:
    """A server whose socks inbound sniffs, and an echo target: their ports."""
    async with trio.open_nursery() as nursery:
        echo = await nursery.start(serve_tcp_echo, LOOPBACK)
        bound = await nursery.start(server.run, sniffing_config(sniffing))
        yield bound["socks-in"][0][1], echo
        nursery.cancel_scope.cancel()


async def through(proxy: int, host: str, port: int, payload: bytes) -> bytes:
    """What the target sends back for ``payload`` ("" if the tunnel closed)."""
    stream = await open_connect(LOOPBACK, proxy, host, port)
    async with stream:
        await stream.send_all(payload)
        received = bytearray()
        while len(received) < len(payload):
            data = await stream.receive_some(len(payload) - len(received))
            if not data:
                break
            received += data
        return bytes(received)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
        client_hello("localhost"),
    ],
    ids=["http", "tls"],
)
async def test_a_tunnel_to_an_ip_goes_to_the_name_its_first_bytes_carry(
    first_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    sniffing = model.Sniffing(dest_override=("http", "tls"))
    caplog.set_level(logging.INFO, "vtrio.access")
    with trio.fail_after(20):
        async with echo_behind(sniffing) as (proxy, echo):
            assert await through(proxy, UNREACHABLE, echo, first_bytes) == first_bytes
    (line,) = access_lines(caplog)
    assert f"localhost:{echo}" in line
    assert re.search(rf"up {len(first_bytes)} down {len(first_bytes)} ", line)


async def test_route_only_routes_by_the_name_and_dials_the_ip() -> None:
    sniffing = model.Sniffing(dest_override=("http",), route_only=True)
    with trio.fail_after(20):
        async with echo_behind(sniffing) as (proxy, echo):
            allowed = b"GET / HTTP/1.1\r\nHost: no-such-name.test\r\n\r\n"
            assert await through(proxy, LOOPBACK, echo, allowed) == allowed
            blocked = b"GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
            assert await through(proxy, LOOPBACK, echo, blocked) == b""


@pytest.mark.parametrize(
    ("sniffing", "host"),
    [
        (model.Sniffing(("tls",)), UNREACHABLE),  # http is not in destOverride
        (
            model.Sniffing(
                ("http",), domains_excluded=(model.DomainMatcher("keyword", "host"),)
            ),
            UNREACHABLE,
        ),
        (
            model.Sniffing(
                ("http",), ips_excluded=(ipaddress.ip_network("127.0.0.0/8"),)
            ),
            LOOPBACK,
        ),
    ],
    ids=["not-asked-for", "domain-excluded", "ip-excluded"],
)
async def test_names_not_asked_for_or_excluded_leave_the_destination(
    sniffing: model.Sniffing, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vtrio.access")
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with trio.fail_after(30):
        async with echo_behind(sniffing) as (proxy, echo):
            if host == LOOPBACK:
                assert await through(proxy, host, echo, request) == request
            else:
                with trio.move_on_after(1):  # TEST-NET-1 never answers
                    await through(proxy, host, echo, request)
    assert all(f"localhost:{echo}" not in line for line in access_lines(caplog))


@pytest.mark.parametrize("sniffing", [None, model.Sniffing(("http", "tls"))])
async def test_a_rule_on_the_sniffed_protocol_blocks_bittorrent(
    sniffing: model.Sniffing | None,
) -> None:
    with trio.fail_after(20):
        async with echo_behind(sniffing) as (proxy, echo):
            echoed = await through(proxy, LOOPBACK, echo, BITTORRENT)
            # Without sniffing the rule cannot see the protocol.
            assert echoed == (BITTORRENT if sniffing is None else b"")
            other = b"\x00\x01 some other protocol"
            assert await through(proxy, LOOPBACK, echo, other) == other


async def test_a_server_that_speaks_first_is_reached_after_the_wait() -> None:
    greeting = b"220 mail.example ESMTP\r\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            source = await nursery.start(serve_tcp_source, LOOPBACK, greeting)
            config = sniffing_config(model.Sniffing(("http", "tls")))
            bound = await nursery.start(server.run, config)
            proxy = bound["socks-in"][0][1]
            stream = await open_connect(LOOPBACK, proxy, LOOPBACK, source)
            async with stream:
                assert await receive_exactly(stream, len(greeting)) == greeting
            nursery.cancel_scope.cancel()


async def test_a_client_that_closes_while_sniffed_still_delivers_its_bytes() -> None:
    """EOF met while looking ahead reaches the target after the bytes."""
    with trio.fail_after(20):
        async with echo_behind(model.Sniffing(("http",))) as (proxy, echo):
            stream = await open_connect(LOOPBACK, proxy, LOOPBACK, echo)
            async with stream:
                await stream.send_all(b"GET / HTT")
                await stream.send_eof()
                received = bytearray()
                while data := await stream.receive_some(100):
                    received += data
            assert received == b"GET / HTT"


async def test_a_head_that_never_names_a_host_is_passed_on_whole() -> None:
    """Past the look-ahead limit the bytes flow on unchanged."""
    payload = b"GET / HTTP/1.1\r\n" + b"".join(
        b"X-Filler-%d: %s\r\n" % (index, b"a" * 60) for index in range(700)
    )
    assert len(payload) > SNIFF_LIMIT
    with trio.fail_after(20):
        async with echo_behind(model.Sniffing(("http",))) as (proxy, echo):
            assert await through(proxy, LOOPBACK, echo, payload) == payload


async def test_a_client_trickling_its_first_bytes_is_sniffed_for_200_ms_at_most() -> (
    None
):
    """Sniffing waits 200 ms in all, however the bytes are spread; then the
    tunnel goes to the address asked for, with every byte. (Had it waited
    for the Host, the rule on blocked.test would have closed the tunnel.)"""
    request = b"GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
    with trio.fail_after(20):
        async with echo_behind(model.Sniffing(("http",))) as (proxy, echo):
            stream = await open_connect(LOOPBACK, proxy, LOOPBACK, echo)
            async with stream:
                for index in range(len(request)):
                    await stream.send_all(request[index : index + 1])
                    await trio.sleep(0.02)  # about 0.7 s for the whole head
                assert await receive_exactly(stream, len(request)) == request
