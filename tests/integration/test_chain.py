"""The whole chain in one process over loopback sockets.

SOCKS5 client -> vtrio client config (socks inbound, vmess outbound) -> vtrio
server config (vmess inbound, freedom outbound) -> echo target, for every
security, both header kinds, TCP and UDP, with checksummed payloads.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
import trio

from tests.support.echo import closed_port, serve_tcp_echo, serve_udp_echo
from tests.support.socks5 import (
    SocksError,
    open_connect,
    open_udp_associate,
    pack_address,
    socks_inbound,
)
from vtrio import server
from vtrio.config import model

LOOPBACK = "127.0.0.1"
USER_ID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
SECURITIES = list(model.Security)


def payload(size: int, seed: str = "chain") -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def server_config(*, policy: model.LevelPolicy | None = None) -> model.Config:
    users = (
        model.VMessUser(USER_ID, email="aead@example.com"),
        model.VMessUser(uuid.uuid5(USER_ID, "legacy"), alter_id=4, email="md5@x"),
    )
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="vmess-in",
                protocol="vmess",
                listen=LOOPBACK,
                ports=(0,),
                settings=model.VMessInboundSettings(users=users),
            ),
        ),
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
        policy=model.Policy({0: policy} if policy else {}),
    )


def client_config(
    port: int, security: model.Security, *, legacy: bool = False
) -> model.Config:
    user = (
        model.VMessUser(uuid.uuid5(USER_ID, "legacy"), alter_id=4, security=security)
        if legacy
        else model.VMessUser(USER_ID, security=security)
    )
    return model.Config(
        inbounds=(socks_inbound(model.SocksInboundSettings(udp=True)),),
        outbounds=(
            model.Outbound(
                "proxy",
                "vmess",
                model.VMessOutboundSettings(
                    (model.VMessServer(LOOPBACK, port, (user,)),)
                ),
            ),
        ),
    )


async def start_chain(
    nursery: trio.Nursery,
    security: model.Security,
    *,
    legacy: bool = False,
    policy: model.LevelPolicy | None = None,
) -> int:
    """Start server and client; return the client's SOCKS port."""
    bound = await nursery.start(server.run, server_config(policy=policy))
    vmess_port = bound["vmess-in"][0][1]
    bound = await nursery.start(
        server.run, client_config(vmess_port, security, legacy=legacy)
    )
    port: int = bound["socks-in"][0][1]
    return port


async def open_echo_tunnel(
    nursery: trio.Nursery,
    security: model.Security = model.Security.AES_128_GCM,
    *,
    legacy: bool = False,
    policy: model.LevelPolicy | None = None,
) -> trio.SocketStream:
    """An echo target, a chain in front of it, and a SOCKS tunnel to the echo."""
    echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
    socks_port = await start_chain(nursery, security, legacy=legacy, policy=policy)
    return await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)


async def exchange(stream: trio.abc.Stream, data: bytes) -> bytes:
    received = bytearray()

    async def sender() -> None:
        view = memoryview(data)
        for start in range(0, len(view), 65536):
            await stream.send_all(view[start : start + 65536])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while len(received) < len(data):
            chunk = await stream.receive_some(65536)
            assert chunk, "the chain closed early"
            received += chunk
    return bytes(received)


@pytest.mark.parametrize("legacy", [False, True], ids=["aead", "legacy"])
@pytest.mark.parametrize("security", SECURITIES, ids=[s.value for s in SECURITIES])
async def test_tcp_chain_round_trips_a_checksummed_payload(
    security: model.Security, legacy: bool
) -> None:
    data = payload(2 * 1024 * 1024 + 17, security.value)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stream = await open_echo_tunnel(nursery, security, legacy=legacy)
            async with stream:
                back = await exchange(stream, data)
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("legacy", [False, True], ids=["aead", "legacy"])
@pytest.mark.parametrize(
    "security",
    [s for s in SECURITIES if s is not model.Security.ZERO],
    ids=lambda s: s.value,
)
async def test_udp_chain_keeps_datagrams_whole(
    security: model.Security, legacy: bool
) -> None:
    sizes = [1, 100, 1400, 8000]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_udp_echo, LOOPBACK)
            socks_port = await start_chain(nursery, security, legacy=legacy)
            async with await open_udp_associate(LOOPBACK, socks_port) as udp:
                for size in sizes:
                    data = payload(size, f"udp{size}")
                    await udp.send_to(LOOPBACK, echo_port, data)
                    host, port, back = await udp.receive_from()
                    assert (host, port, back) == (LOOPBACK, echo_port, data)
            nursery.cancel_scope.cancel()


async def test_half_close_keeps_the_other_direction_flowing() -> None:
    """The client sends EOF; the echo's answer still comes back whole."""
    data = payload(300_000, "half")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stream = await open_echo_tunnel(nursery)
            async with stream:
                await stream.send_all(data)
                await stream.send_eof()
                received = bytearray()
                while chunk := await stream.receive_some(65536):
                    received += chunk
            assert bytes(received) == data
            nursery.cancel_scope.cancel()


async def serve_banner_then_echo(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A target that speaks first (as SMTP or SSH do), then echoes."""

    async def banner(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\r\n")
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(banner, listeners)


async def test_a_target_that_speaks_first_is_heard() -> None:
    """The client sends nothing: after the first-payload wait the request
    header goes alone, the banner comes back, and the tunnel stays usable."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_banner_then_echo)
            socks_port = await start_chain(nursery, model.Security.AES_128_GCM)
            stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, target)
            async with stream:
                assert await receive_exactly(stream, 11) == b"220 ready\r\n"
                await stream.send_all(b"HELO x")
                assert await receive_exactly(stream, 6) == b"HELO x"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("eof", [False, True], ids=["payload", "payload-eof"])
async def test_a_payload_pipelined_behind_the_request_arrives(eof: bool) -> None:
    """Greeting, request and payload (and EOF) in one write, before any
    reply: the payload is taken from the handshake buffer, not lost."""
    data = payload(5000, "pipelined")
    request = b"\x05\x01\x00" + b"\x05\x01\x00" + pack_address(LOOPBACK, 0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            socks_port = await start_chain(nursery, model.Security.AES_128_GCM)
            request = request[:-2] + echo_port.to_bytes(2, "big")
            stream = await trio.open_tcp_stream(LOOPBACK, socks_port)
            async with stream:
                await stream.send_all(request + data)
                if eof:
                    await stream.send_eof()
                assert await receive_exactly(stream, 2 + 10) == (
                    b"\x05\x00" + b"\x05\x00\x00" + pack_address("0.0.0.0", 0)
                )
                assert await receive_exactly(stream, len(data)) == data
                if eof:
                    assert await stream.receive_some(10) == b""
            nursery.cancel_scope.cancel()


async def test_eof_right_after_the_request_closes_the_tunnel() -> None:
    """Nothing to send and EOF: the target sees EOF and the client too."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stream = await open_echo_tunnel(nursery)
            async with stream:
                await stream.send_eof()
                assert await stream.receive_some(10) == b""
            nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


async def test_failed_dial_gives_the_socks_refused_code() -> None:
    """socks -> freedom: a refused destination is SOCKS reply code 5."""
    config = model.Config(
        inbounds=client_config(1, model.Security.AUTO).inbounds,
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, config)
            port = await closed_port()
            with pytest.raises(SocksError, match="reply code 5"):
                await open_connect(LOOPBACK, bound["socks-in"][0][1], LOOPBACK, port)
            nursery.cancel_scope.cancel()


async def test_failed_dial_behind_vmess_closes_the_client() -> None:
    """The VMess server cannot reach the target: the client sees EOF, no data."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            socks_port = await start_chain(nursery, model.Security.AES_128_GCM)
            port = await closed_port()
            stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, port)
            async with stream:
                await stream.send_all(b"ping")
                assert await stream.receive_some(10) == b""
            nursery.cancel_scope.cancel()


async def test_idle_tunnel_is_closed_after_conn_idle() -> None:
    """The server's level-0 connIdle (0.5 s here) ends a silent tunnel."""
    policy = model.LevelPolicy(conn_idle=0.5, uplink_only=0.2, downlink_only=0.2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stream = await open_echo_tunnel(nursery, policy=policy)
            async with stream:
                await stream.send_all(b"hello")
                assert await exchange_once(stream) == b"hello"
                started = trio.current_time()
                assert await stream.receive_some(10) == b""
                waited = trio.current_time() - started
            assert 0.4 < waited < 5
            nursery.cancel_scope.cancel()


async def exchange_once(stream: trio.abc.Stream) -> bytes:
    received = b""
    while len(received) < 5:
        received += await stream.receive_some(100)
    return received
