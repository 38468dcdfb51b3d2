"""The PROXY protocol in front of an inbound: the parser byte for byte, and a
VMess server behind a balancer over real loopback sockets."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.hardening.branches import KNOWN, SERVER_USERS
from tests.support.hardening import (
    Target,
    client_connection,
    probe,
    running,
    server_config,
    target_running,
    task_count,
    vmess_exchange,
    wait_task_count,
)
from vtrio.config import model
from vtrio.errors import RemoteProtocolError
from vtrio.net.transport.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    parse_proxy_header,
)

TIMEOUT = 10


def v2_header(
    source: str, port: int, *, command: int = 0x21, tlvs: bytes = b""
) -> bytes:
    """A v2 header from ``source``:``port`` to 192.0.2.1:443 (or [2001:db8::1])."""
    address = ipaddress.ip_address(source)
    if address.version == 4:
        family = 0x11
        body = address.packed + ipaddress.ip_address("192.0.2.1").packed
    else:
        family = 0x21
        body = address.packed + ipaddress.ip_address("2001:db8::1").packed
    body += port.to_bytes(2, "big") + (443).to_bytes(2, "big") + tlvs
    return V2_SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body


def v1_header(source: str, port: int) -> bytes:
    kind = "TCP6" if ":" in source else "TCP4"
    destination = "2001:db8::1" if ":" in source else "192.0.2.1"
    return f"PROXY {kind} {source} {destination} {port} 443\r\n".encode()


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (v1_header("203.0.113.7", 51000), ("203.0.113.7", 51000)),
        (v1_header("2001:db8::7", 65535), ("2001:db8::7", 65535)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        (v2_header("203.0.113.7", 51000), ("203.0.113.7", 51000)),
        (v2_header("2001:db8::7", 1), ("2001:db8::7", 1)),
        # TLVs after the addresses (AWS NLB's VPC endpoint id, ALPN) are skipped.
        (v2_header("198.51.100.2", 80, tlvs=b"\x01\x00\x02h2\xea\x00\x01x"), None),
        (v2_header("198.51.100.2", 80, command=0x20), None),  # LOCAL
        (V2_SIGNATURE + b"\x21\x00\x00\x00", None),  # UNSPEC
    ],
)
def test_headers_and_the_client_they_name(
    header: bytes, source: tuple[str, int] | None
) -> None:
    parsed = parse_proxy_header(header + b"VMess bytes")
    assert parsed is not None
    assert parsed.length == len(header)
    if header.endswith(b"h2\xea\x00\x01x"):
        assert parsed.source == ("198.51.100.2", 80)
    else:
        assert parsed.source == source


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "malformed PROXY protocol v1"),
        (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "bad PROXY protocol v1 line"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n", "bad PROXY protocol v1 line"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address"),
        (b"PROXY TCP4 " + b"1" * 100, "over 107 bytes"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c", "bad version/command"),
        (V2_SIGNATURE + b"\x21\x51\x00\x00", "unknown family"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "addresses cut short"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "over 4096 bytes"),
    ],
)
def test_bad_headers_are_refused_by_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        parse_proxy_header(data)


@given(
    source=st.ip_addresses(),
    port=st.integers(0, 65535),
    binary=st.booleans(),
    rest=st.binary(max_size=40),
)
def test_every_prefix_waits_and_the_whole_header_is_exact(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    binary: bool,
    rest: bytes,
) -> None:
    header = (v2_header if binary else v1_header)(str(source), port)
    for cut in range(1, len(header)):
        assert parse_proxy_header(header[:cut]) is None
    expected = ProxyHeader(len(header), (str(source), port))
    assert parse_proxy_header(header + rest) == expected


def behind_a_balancer() -> model.Config:
    base = server_config(SERVER_USERS, handshake=1.0)
    inbound = dataclasses.replace(
        base.inbounds[0],
        stream=dataclasses.replace(base.inbounds[0].stream, accept_proxy_protocol=True),
    )
    return dataclasses.replace(base, inbounds=(inbound,))


@pytest.mark.parametrize("make", [v1_header, v2_header], ids=["v1", "v2"])
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
async def test_the_access_log_names_the_client_behind_the_balancer(
    make: object, split: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    header = make("2001:db8::7", 40000)  # type: ignore[operator]
    with trio.fail_after(TIMEOUT):
        async with (
            target_running(Target()) as target,
            running(behind_a_balancer()) as (port, _),
        ):
            client = client_connection(KNOWN, target.port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with stream:
                opening = client.start(b"through")
                if split:
                    for index in range(len(header)):
                        await stream.send_all(header[index : index + 1])
                        await trio.sleep(0.001)
                else:
                    opening = header + opening
                echoed = await vmess_exchange(
                    stream, client, b"through", first_packet=opening
                )
    assert echoed == b"through"
    lines = [r.getMessage() for r in caplog.records if r.name == "vtrio.access"]
    assert len(lines) == 1
    assert lines[0].startswith("from [2001:db8::7]:40000 closed tcp:127.0.0.1:")


async def test_a_connection_without_the_header_is_closed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio")
    with trio.fail_after(TIMEOUT):
        async with (
            target_running(Target()) as target,
            running(behind_a_balancer()) as (port, _),
        ):
            before = task_count()
            client = client_connection(KNOWN, target.port)
            closing = await probe(port, client.start(b"no header"))
            assert (closing.answer, closing.how, target.accepted) == (b"", "fin", 0)
            assert await wait_task_count(before) <= before
    assert any("no PROXY protocol header" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


async def test_source_rules_route_by_the_client_the_header_names() -> None:
    base = behind_a_balancer()
    rule = model.RoutingRule(
        "block", source_ips=(ipaddress.ip_network("203.0.113.0/24"),)
    )
    config = dataclasses.replace(
        base,
        outbounds=(
            *base.outbounds,
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(rules=(rule,)),
    )
    answers = []
    with trio.fail_after(TIMEOUT):
        async with (
            target_running(Target()) as target,
            running(config) as (port, _),
        ):
            for client_ip in ("198.51.100.7", "203.0.113.7"):
                client = client_connection(KNOWN, target.port)
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    opening = v1_header(client_ip, 40000) + client.start(b"who")
                    try:
                        answers.append(
                            await vmess_exchange(
                                stream, client, b"who", first_packet=opening
                            )
                        )
                    except (RemoteProtocolError, trio.BrokenResourceError):
                        answers.append(b"")
    assert answers == [b"who", b""]
