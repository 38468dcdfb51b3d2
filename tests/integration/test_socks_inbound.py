"""The socks inbound beyond SOCKS5: SOCKS4 and 4a as v2ray serves them
(CONNECT only, one failure code, refused when the inbound wants a password),
and HTTP proxy requests with the same accounts, as Xray's socks inbound."""

from __future__ import annotations

import base64
import socket
import struct

import pytest
import trio

from tests.support.echo import closed_port, serve_tcp_echo
from tests.support.socks5 import receive_exactly, socks_inbound
from vtrio import server
from vtrio.config import model

LOOPBACK = "127.0.0.1"
GRANTED, REJECTED = 90, 91


def socks_config(
    settings: model.SocksInboundSettings, *, handshake: float = 4
) -> model.Config:
    return model.Config(
        policy=model.Policy({0: model.LevelPolicy(handshake=handshake)}),
        inbounds=(socks_inbound(settings),),
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
    )


def socks4_request(
    port: int, *, ip: str = LOOPBACK, host: str = "", command: int = 1
) -> bytes:
    head = struct.pack("!BBH", 4, command, port) + socket.inet_aton(ip) + b"user\0"
    return head + (host.encode() + b"\0" if host else b"")


async def exchange(
    proxy_port: int, request: bytes, payload: bytes = b""
) -> tuple[bytes, bytes]:
    """The 8-byte reply and what the payload brought back (b"" when refused)."""
    stream = await trio.open_tcp_stream(LOOPBACK, proxy_port)
    async with stream:
        await stream.send_all(request + payload)  # pipelined, as clients do
        reply = await receive_exactly(stream, 8)
        echoed = (
            await receive_exactly(stream, len(payload)) if reply[1] == GRANTED else b""
        )
        return reply, echoed


async def test_socks4_and_4a_connect_relay_bytes_and_failures_get_91() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(
                server.run, socks_config(model.SocksInboundSettings())
            )
            proxy = bound["socks-in"][0][1]
            reply, echoed = await exchange(proxy, socks4_request(echo), b"four")
            assert (reply, echoed) == (bytes((0, GRANTED)) + bytes(6), b"four")
            reply, echoed = await exchange(
                proxy, socks4_request(echo, ip="0.0.0.1", host="localhost"), b"4a"
            )
            assert (reply[1], echoed) == (GRANTED, b"4a")
            reply, _ = await exchange(proxy, socks4_request(await closed_port()))
            assert reply == bytes((0, REJECTED)) + bytes(6)
            reply, _ = await exchange(proxy, socks4_request(echo, command=2))  # BIND
            assert reply[1] == REJECTED
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("oversized", ["user", "host"])
async def test_socks4_fields_without_their_nul_are_bounded(oversized: str) -> None:
    """Refused at the limit, not at the (here one minute) handshake deadline."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            config = socks_config(model.SocksInboundSettings(), handshake=60)
            bound = await nursery.start(server.run, config)
            request = struct.pack("!BBH", 4, 1, 80) + socket.inet_aton("0.0.0.1")
            request += b"x" * 300 if oversized == "user" else b"\0" + b"h" * 300
            stream = await trio.open_tcp_stream(LOOPBACK, bound["socks-in"][0][1])
            async with stream:
                await stream.send_all(request)
                assert await stream.receive_some(10) == b""  # closed, no reply
            nursery.cancel_scope.cancel()


async def test_socks4_is_refused_where_a_password_is_required() -> None:
    settings = model.SocksInboundSettings(
        auth="password", accounts=(model.Account("u", "p"),)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, socks_config(settings))
            reply, echoed = await exchange(
                bound["socks-in"][0][1], socks4_request(echo), b"x"
            )
            assert (reply[1], echoed) == (REJECTED, b"")
            nursery.cancel_scope.cancel()


async def http_connect(proxy_port: int, target: int, headers: str = "") -> bytes:
    """The status line of a CONNECT, then "ping" echoed if it was 200."""
    stream = await trio.open_tcp_stream(LOOPBACK, proxy_port)
    async with stream:
        await stream.send_all(
            f"CONNECT {LOOPBACK}:{target} HTTP/1.1\r\n{headers}\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(1024)
            assert chunk, head
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " in status:
            await stream.send_all(b"ping")
            assert await receive_exactly(stream, 4) == b"ping"
        return status


async def test_http_proxy_requests_on_the_socks_port_use_its_accounts() -> None:
    settings = model.SocksInboundSettings(
        auth="password", accounts=(model.Account("u", "p"),)
    )
    token = base64.b64encode(b"u:p").decode()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            open_socks = await nursery.start(
                server.run, socks_config(model.SocksInboundSettings())
            )
            guarded = await nursery.start(server.run, socks_config(settings))
            status = await http_connect(open_socks["socks-in"][0][1], echo)
            assert status.startswith(b"HTTP/1.1 200")
            guarded_port = guarded["socks-in"][0][1]
            status = await http_connect(guarded_port, echo)
            assert status.startswith(b"HTTP/1.1 407")
            status = await http_connect(
                guarded_port, echo, f"Proxy-Authorization: Basic {token}\r\n"
            )
            assert status.startswith(b"HTTP/1.1 200")
            nursery.cancel_scope.cancel()


async def test_http_on_the_socks_port_outlives_the_handshake_deadline() -> None:
    config = socks_config(model.SocksInboundSettings(), handshake=0.3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, config)
            stream = await trio.open_tcp_stream(LOOPBACK, bound["socks-in"][0][1])
            async with stream:
                await stream.send_all(
                    f"CONNECT {LOOPBACK}:{echo} HTTP/1.1\r\n\r\n".encode()
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(1024)
                assert head.startswith(b"HTTP/1.1 200")
                await trio.sleep(0.6)  # twice the handshake deadline
                await stream.send_all(b"still")
                assert await receive_exactly(stream, 5) == b"still"
            nursery.cancel_scope.cancel()


async def socks5_password_status(proxy_port: int, user: bytes, password: bytes) -> int:
    """The RFC 1929 status the inbound answers to these credentials."""
    stream = await trio.open_tcp_stream(LOOPBACK, proxy_port)
    async with stream:
        await stream.send_all(b"\x05\x01\x02")
        assert await receive_exactly(stream, 2) == b"\x05\x02"
        await stream.send_all(
            bytes((1, len(user))) + user + bytes((len(password),)) + password
        )
        return (await receive_exactly(stream, 2))[1]


async def test_socks5_passwords_are_checked() -> None:
    settings = model.SocksInboundSettings(
        auth="password", accounts=(model.Account("user", "secret"),)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, socks_config(settings))
            port = bound["socks-in"][0][1]
            assert await socks5_password_status(port, b"user", b"secret") == 0
            for user, password in (
                (b"user", b"secreT"),
                (b"usex", b"secret"),
                (b"user", b""),
            ):
                assert await socks5_password_status(port, user, password) == 1
            nursery.cancel_scope.cancel()


def test_an_account_matches_only_its_exact_bytes() -> None:
    account = model.Account("user", "pässword")
    assert account.matches(b"user", "pässword".encode())
    assert not account.matches(b"user", b"passwor")
    assert not account.matches(b"User", "pässword".encode())
