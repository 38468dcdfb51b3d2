"""Mux.Cool and XUDP from real clients into vtrio's server (server.run), and
vtrio's own Mux client into vtrio's and v2ray's servers.

v2ray 4.34 with ``"mux": {"enabled": true, "concurrency": 8}`` carries several
concurrent TCP flows, and UDP, through Mux sessions; sing-box 1.14 with
``packet_encoding: "xudp"`` carries UDP as an XUDP session. Both enter through
their SOCKS inbounds, every byte is checksummed at the far end, and the Mux
server's debug log shows which sub-sessions it opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import socket
import struct
import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from tests.interop.peers import (
    LOOPBACK,
    Account,
    Route,
    client_config,
    free_ports,
    open_peer,
    require_peer,
    server_config,
)
from tests.support.echo import serve_tcp_echo, serve_udp_echo
from tests.support.socks5 import (
    open_connect,
    open_udp_associate,
    receive_exactly,
    socks_inbound,
)
from vtrio import server
from vtrio.config import model

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = pytest.mark.interop

USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")


def vtrio_server_config() -> model.Config:
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="vmess-in",
                protocol="vmess",
                listen=LOOPBACK,
                ports=(0,),
                settings=model.VMessInboundSettings(users=(model.VMessUser(USER),)),
            ),
        ),
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
    )


def opened_sessions(caplog: pytest.LogCaptureFixture, network: str) -> list[str]:
    """The Mux sub-sessions vtrio opened, from its debug log."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "vtrio.net.mux"
        and "opened, " + network in record.getMessage()
    ]


def payload_of(flow: int, size: int) -> bytes:
    return hashlib.shake_256(f"flow {flow}".encode()).digest(size)


async def echo_flow(socks_port: int, echo_port: int, flow: int, size: int) -> bytes:
    """One TCP flow through SOCKS; returns the sha256 of what came back."""
    stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
    async with stream:
        data = payload_of(flow, size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, data)
            echoed = await receive_exactly(stream, size)
    return hashlib.sha256(echoed).digest()


async def test_v2ray_mux_client_concurrent_tcp_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The handler takes the level set last: DEBUG, for the Mux log.
    caplog.set_level(logging.INFO, logger="vtrio.access")
    caplog.set_level(logging.DEBUG, logger="vtrio.net.mux")
    peer = require_peer("v2ray", "4.34")
    (socks_port,) = free_ports(1)
    sizes = [1, 1000, 8192, 8193, 100_000, 300_000, 65536, 5]
    digests: dict[int, bytes] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, vtrio_server_config())
            route = Route(
                socks_port, Account(str(USER)), server_port=bound["vmess-in"][0][1]
            )
            config = client_config(peer, [route])
            config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):

                async def run(flow: int, size: int) -> None:
                    digests[flow] = await echo_flow(socks_port, echo_port, flow, size)

                async with trio.open_nursery() as flows:
                    for flow, size in enumerate(sizes):
                        flows.start_soon(run, flow, size)
            nursery.cancel_scope.cancel()
    for flow, size in enumerate(sizes):
        assert digests[flow] == hashlib.sha256(payload_of(flow, size)).digest()
    # Every flow was a Mux sub-session, none a plain VMess tunnel (those
    # write an access line).
    assert len(opened_sessions(caplog, "TCP")) == len(sizes)
    assert not [r for r in caplog.records if r.name == "vtrio.access"]


async def udp_exchange(
    socks_port: int, echo_ports: list[int], count: int
) -> tuple[dict[bytes, int], dict[bytes, tuple[str, int]]]:
    """Datagrams through SOCKS UDP ASSOCIATE, alternating between echo ports.

    Returns:
        sha256 of each payload sent -> its echo port, and sha256 of each reply
        -> the address SOCKS said it came from.
    """
    sent: dict[bytes, int] = {}
    received: dict[bytes, tuple[str, int]] = {}
    async with await open_udp_associate(LOOPBACK, socks_port) as association:
        for index in range(count):
            data = payload_of(index, 100 + 50 * index)
            target = echo_ports[index % len(echo_ports)]
            await association.send_to(LOOPBACK, target, data)
            sent[hashlib.sha256(data).digest()] = target
            # One at a time: UDP through a proxy may drop under a burst.
            host, port, reply = await association.receive_from()
            received[hashlib.sha256(reply).digest()] = (host, port)
    return sent, received


@pytest.mark.parametrize(
    ("peer_name", "version", "packet_encoding", "udp_sessions"),
    [
        # XUDP: one sub-session carries every destination.
        ("sing-box", "1.14", "xudp", 1),
        # Plain Mux UDP: v2ray opens a sub-session per destination.
        ("v2ray", "4.34", "", 2),
        # Xray's Mux puts UDP on XUDP (xudpConcurrency 16): one sub-session.
        ("xray", "26.10", "", 1),
    ],
)
async def test_udp_datagrams_through_mux(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    peer_name: str,
    version: str,
    packet_encoding: str,
    udp_sessions: int,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vtrio.net.mux")
    peer = require_peer(peer_name, version)
    (socks_port,) = free_ports(1)
    account = Account(str(USER), packet_encoding=packet_encoding)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echoes = [await nursery.start(serve_udp_echo, LOOPBACK) for _ in "ab"]
            bound = await nursery.start(server.run, vtrio_server_config())
            route = Route(socks_port, account, server_port=bound["vmess-in"][0][1])
            config = client_config(peer, [route])
            if peer.name in ("v2ray", "xray"):
                config["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):
                sent, received = await udp_exchange(socks_port, echoes, 20)
            nursery.cancel_scope.cancel()
    assert len(sent) == 20
    assert received == {digest: (LOOPBACK, port) for digest, port in sent.items()}
    assert len(opened_sessions(caplog, "UDP")) == udp_sessions


async def test_mux_sub_sessions_are_sniffed_like_tunnels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule on the sniffed protocol holds inside Mux too: with v2ray's
    client muxing every flow, a BitTorrent handshake is still blocked and
    an HTTP request to an address nothing answers at goes to its Host."""
    caplog.set_level(logging.DEBUG, logger="vtrio.net.mux")
    peer = require_peer("v2ray", "4.34")
    (socks_port,) = free_ports(1)
    base = vtrio_server_config()
    config = dataclasses.replace(
        base,
        inbounds=(
            dataclasses.replace(
                base.inbounds[0], sniffing=model.Sniffing(("http", "tls"))
            ),
        ),
        outbounds=(
            *base.outbounds,
            model.Outbound("block", "blackhole", model.BlackholeSettings()),
        ),
        routing=model.Routing(
            rules=(model.RoutingRule("block", protocols=("bittorrent",)),)
        ),
    )
    bittorrent = b"\x13BitTorrent protocol" + bytes(48)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, config)
            route = Route(
                socks_port, Account(str(USER)), server_port=bound["vmess-in"][0][1]
            )
            client = client_config(peer, [route])
            client["outbounds"][0]["mux"] = {"enabled": True, "concurrency": 8}
            async with open_peer(peer, "client", client, tmp_path, [socks_port]):
                request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
                answers = {}
                for name, host, data in (
                    ("http", "192.0.2.1", request),
                    ("bittorrent", LOOPBACK, bittorrent),
                    ("other", LOOPBACK, b"\x00\x01 other"),
                ):
                    stream = await open_connect(LOOPBACK, socks_port, host, echo_port)
                    async with stream:
                        await stream.send_all(data)
                        received = b""
                        with trio.move_on_after(3):
                            while len(received) < len(data):
                                chunk = await stream.receive_some(1024)
                                if not chunk:
                                    break
                                received += chunk
                        answers[name] = received == data
            nursery.cancel_scope.cancel()
    assert answers == {"http": True, "bittorrent": False, "other": True}
    assert len(opened_sessions(caplog, "TCP")) == 3  # all three went through Mux


# --- vtrio's Mux client ---------------------------------------------------------


async def serve_counting_forwarder(
    target_port: int,
    accepted: list[trio.CancelScope],
    *,
    sockets: list[trio.SocketStream] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forwards each connection to ``target_port``, keeping a scope per
    connection: how many VMess connections a client made, and a way to cut
    one (``sockets`` gets the client sides, to cut one with a reset)."""

    async def forward(client: trio.SocketStream) -> None:
        if sockets is not None:
            sockets.append(client)
        with trio.CancelScope() as scope:
            accepted.append(scope)
            await _forward(client)

    async def _forward(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(LOOPBACK, target_port) as server:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
                await sink.send_eof()

            async with trio.open_nursery() as pumps:
                pumps.start_soon(pump, client, server)
                await pump(server, client)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(forward, listeners)


async def concurrent_flows_then_one(
    socks_port: int, echo_port: int, sizes: list[int]
) -> None:
    """A checksummed flow of each size at once, then one more (4096 bytes)
    on whatever connection is still open."""
    digests: dict[int, bytes] = {}

    async def run(flow: int, size: int) -> None:
        digests[flow] = await echo_flow(socks_port, echo_port, flow, size)

    async with trio.open_nursery() as flows:
        for flow, size in enumerate(sizes):
            flows.start_soon(run, flow, size)
    await run(len(sizes), 4096)
    for flow, size in enumerate([*sizes, 4096]):
        assert digests[flow] == hashlib.sha256(payload_of(flow, size)).digest()


def mux_client_config(server_port: int, concurrency: int) -> model.Config:
    return model.Config(
        inbounds=(socks_inbound(),),
        outbounds=(
            model.Outbound(
                "proxy",
                "vmess",
                model.VMessOutboundSettings(
                    (
                        model.VMessServer(
                            LOOPBACK, server_port, (model.VMessUser(USER),)
                        ),
                    )
                ),
                mux_concurrency=concurrency,
            ),
        ),
    )


@contextlib.asynccontextmanager
async def running_server(server_name: str, tmp_path: Path) -> AsyncIterator[int]:
    """vtrio's or v2ray 4.34's VMess server for USER; yields its port."""
    if server_name == "vtrio":
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, vtrio_server_config())
            yield bound["vmess-in"][0][1]
            nursery.cancel_scope.cancel()
    else:
        peer = require_peer("v2ray", "4.34")
        (server_port,) = free_ports(1)
        config = server_config(peer, [Route(server_port, Account(str(USER)))])
        async with open_peer(peer, "server", config, tmp_path, [server_port]):
            yield server_port


@pytest.mark.parametrize("server_name", ["vtrio", "v2ray"])
@pytest.mark.parametrize(("concurrency", "connections"), [(8, 1), (3, 3)])
async def test_vtrio_mux_client_carries_concurrent_flows_in_few_connections(
    tmp_path: Path, server_name: str, concurrency: int, connections: int
) -> None:
    sizes = [1, 1000, 8192, 8193, 100_000, 300_000, 65536, 5]
    accepted: list[trio.CancelScope] = []

    async def through_client(server_port: int) -> None:
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            forwarder = await nursery.start(
                serve_counting_forwarder, server_port, accepted
            )
            bound = await nursery.start(
                server.run, mux_client_config(forwarder, concurrency)
            )
            await concurrent_flows_then_one(bound["socks-in"][0][1], echo_port, sizes)
            nursery.cancel_scope.cancel()

    with trio.fail_after(30):
        async with running_server(server_name, tmp_path) as server_port:
            await through_client(server_port)
    assert len(accepted) == connections


@pytest.mark.parametrize("server_name", ["vtrio", "v2ray"])
async def test_vtrio_mux_client_carries_udp_as_sub_sessions(
    tmp_path: Path, server_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Datagrams to two destinations and a TCP flow share one VMess
    connection: v2ray's Mux UDP, a sub-session per destination."""
    accepted: list[trio.CancelScope] = []

    async def through_client(
        server_port: int,
    ) -> tuple[dict[bytes, int], dict[bytes, tuple[str, int]]]:
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            udp_ports = [await nursery.start(serve_udp_echo, LOOPBACK) for _ in "ab"]
            forwarder = await nursery.start(
                serve_counting_forwarder, server_port, accepted
            )
            config = mux_client_config(forwarder, 8)
            socks = dataclasses.replace(
                config.inbounds[0], settings=model.SocksInboundSettings(udp=True)
            )
            bound = await nursery.start(
                server.run, dataclasses.replace(config, inbounds=(socks,))
            )
            socks_port = bound["socks-in"][0][1]
            digest = await echo_flow(socks_port, echo_port, 0, 3000)
            assert digest == hashlib.sha256(payload_of(0, 3000)).digest()
            sent, received = await udp_exchange(socks_port, udp_ports, 6)
            nursery.cancel_scope.cancel()
        return sent, received

    with trio.fail_after(30), caplog.at_level(logging.DEBUG, "vtrio.net.mux"):
        async with running_server(server_name, tmp_path) as server_port:
            sent, received = await through_client(server_port)
    assert {digest: (LOOPBACK, port) for digest, port in sent.items()} == received
    assert len(accepted) == 1
    if server_name == "vtrio":  # its Mux server logs the sub-sessions it opens
        assert len(opened_sessions(caplog, "UDP")) == 2


async def read_to_end(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(100):
        pass


async def cut_connection_then_tunnel(
    server_config: model.Config,
    client_config: Callable[[int], model.Config],
    *,
    reset: bool,
) -> int:
    """A tunnel through a vtrio client whose connection to the server is cut
    under it (closed, or with a TCP reset); then another tunnel, checksummed.

    Returns:
        How many connections the client opened to the server.
    """
    accepted: list[trio.CancelScope] = []
    sockets: list[trio.SocketStream] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(server.run, server_config)
            forwarder = await nursery.start(
                functools.partial(
                    serve_counting_forwarder,
                    bound["vmess-in"][0][1],
                    accepted,
                    sockets=sockets,
                )
            )
            bound = await nursery.start(server.run, client_config(forwarder))
            socks_port = bound["socks-in"][0][1]
            stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
            async with stream:
                await stream.send_all(b"before")
                assert await receive_exactly(stream, 6) == b"before"
                if reset:  # linger on, 0 s: the close sends a TCP reset
                    linger = struct.pack("ii", 1, 0)
                    sockets[0].socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, linger
                    )
                accepted[0].cancel()
                # The tunnel ends at once (closed or reset), it does not hang.
                with trio.fail_after(2), contextlib.suppress(trio.BrokenResourceError):
                    await read_to_end(stream)
            digest = await echo_flow(socks_port, echo_port, 1, 5000)
            nursery.cancel_scope.cancel()
    assert digest == hashlib.sha256(payload_of(1, 5000)).digest()
    return len(accepted)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_broken_mux_connection_breaks_its_tunnels_and_the_next_opens_another(
    reset: bool,
) -> None:
    client = functools.partial(mux_client_config, concurrency=8)
    assert (
        await cut_connection_then_tunnel(vtrio_server_config(), client, reset=reset)
        == 2
    )


async def serve_banner(*, task_status: trio.TaskStatus[int]) -> None:
    async def greet(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\r\n")
            await stream.receive_some(100)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(greet, listeners)


async def test_a_target_that_speaks_first_is_heard_through_mux() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            banner_port = await nursery.start(serve_banner)
            bound = await nursery.start(server.run, vtrio_server_config())
            client = mux_client_config(bound["vmess-in"][0][1], 8)
            bound = await nursery.start(server.run, client)
            socks_port = bound["socks-in"][0][1]
            stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, banner_port)
            async with stream:
                assert await receive_exactly(stream, 11) == b"220 ready\r\n"
            nursery.cancel_scope.cancel()


async def serve_endless(*, task_status: trio.TaskStatus[int]) -> None:
    """Sends to each connection until it goes away."""

    async def flood(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            async with stream:
                while True:
                    await stream.send_all(bytes(4096))

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(flood, listeners)


async def test_tunnels_closed_mid_download_leave_their_mux_connection_working() -> None:
    """Sub-sessions that end while the server is sending to them (their
    writes cancelled half-way) must not leave the shared VMess stream a
    chunk behind, which stalled every other sub-session on it."""
    accepted: list[trio.CancelScope] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            endless = await nursery.start(serve_endless)
            bound = await nursery.start(server.run, vtrio_server_config())
            forwarder = await nursery.start(
                serve_counting_forwarder, bound["vmess-in"][0][1], accepted
            )
            bound = await nursery.start(server.run, mux_client_config(forwarder, 8))
            socks_port = bound["socks-in"][0][1]

            async def download_a_little() -> None:
                stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, endless)
                await stream.send_all(b"go")
                await receive_exactly(stream, 10_000)
                await trio.aclose_forcefully(stream)

            for _ in range(10):
                async with trio.open_nursery() as downloads:
                    for _ in range(6):
                        downloads.start_soon(download_a_little)
                with trio.fail_after(5):
                    digest = await echo_flow(socks_port, echo_port, 7, 3000)
                assert digest == hashlib.sha256(payload_of(7, 3000)).digest()
            nursery.cancel_scope.cancel()
    assert len(accepted) == 1
