"""Assemble one interop case and push checksummed traffic through it.

Theory of operation: every case is the same chain,

    test (SOCKS5 client) -> client side -> VMess -> server side -> target

where each side is a real peer process or vtrio (in-process through
``vtrio.server.run``, or ``python -m vtrio serve`` as a subprocess). vtrio
reads v2ray JSON, so a vtrio client or server gets exactly the config the
v2ray generator writes for the same route. The server side is started first
and the client side second, each only returning once its port accepts; then
the test opens a SOCKS5 CONNECT (or UDP ASSOCIATE) through the client and
checks the bytes byte for byte: an echo (SHA-256 over the whole stream), a
download from a target that closes first (bytes, then a clean EOF), or
datagram echoes (each compared whole).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Literal

import pytest
import trio

from tests.interop import peers
from tests.interop.matrix import PROFILES, VTRIO, Case
from tests.interop.tap import Tap, header_kind, serve_tap
from tests.support import echo, socks5

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

# One fixed user for every case; the case's options shape the rest.
USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
SEND_SLICE = 64 * 1024
RECEIVE_SIZE = 64 * 1024
# Each datagram size is sent this many times, so a single loss shows up as a
# missing echo instead of passing by luck.
DATAGRAM_ROUNDS = 3
# A lost datagram is not retried: an echo has this long to come back.
DATAGRAM_WAIT = 3.0
UDP_PROBE = b"is the UDP path up?"


def account_for(case: Case) -> peers.Account:
    """The VMess account of a case, in the peer generators' terms."""
    experiments = "AuthenticatedLength" if case.authenticated_length else ""
    return peers.Account(
        uuid=USER_ID,
        alter_id=case.alter_id,
        security=case.security,
        global_padding=case.global_padding,
        authenticated_length=case.authenticated_length,
        experiments=experiments,
        packet_encoding=case.packet_encoding,
    )


def payload(size: int, seed: str) -> bytes:
    """Reproducible pseudo-random bytes (incompressible, unlike zeros)."""
    return random.Random(seed).randbytes(size)


async def _start_vtrio(
    stack: AsyncExitStack,
    config: peers.JSON,
    directory: Path,
    port: int,
    *,
    process: bool,
    crypto_backend: str = "",
) -> None:
    if process:
        environment = {"VTRIO_CRYPTO_BACKEND": crypto_backend} if crypto_backend else {}
        running = await stack.enter_async_context(
            peers.open_vtrio_process(config, directory, [port], environment)
        )
        if crypto_backend:
            assert f"AEAD backend: {crypto_backend}" in running.log_text()
        return
    # Imported here so the peer-only chains still run while vtrio is broken.
    import vtrio.config
    import vtrio.server

    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    loaded = vtrio.config.loads(json.dumps(config))
    await nursery.start(vtrio.server.run, loaded)


def tapped(case: Case) -> bool:
    """Whether the VMess connection of ``case`` runs through the recording tap.

    A sing-box server insists on the header and the first payload arriving
    in one read (spec 3.3, client write rule); a relay could merge or split
    the client's writes and hide a violation, so those cases go direct.
    """
    return case.server != "sing-box"


async def _start_side(
    stack: AsyncExitStack,
    case: Case,
    role: Literal["client", "server"],
    route: peers.Route,
    directory: Path,
) -> None:
    """Start the client or server side of ``case``; it stops with ``stack``."""
    name = case.client if role == "client" else case.server
    if name == VTRIO and role == "client" and case.share_link:
        link = peers.vmess_link(route.account, route.server_host, route.server_port)
        await stack.enter_async_context(
            peers.open_vtrio_link_client(link, directory, route.port)
        )
        return
    if name == VTRIO:
        # vtrio reads v2ray JSON: it gets what a v2ray user would write.
        config = (
            peers.v2ray_client_config([route])
            if role == "client"
            else peers.v2ray_server_config([route])
        )
        await _start_vtrio(
            stack,
            config,
            directory,
            route.port,
            process=case.vtrio_process,
            crypto_backend=case.crypto_backend,
        )
        return
    peer = peers.require_peer(name, PROFILES[name].version)
    config = (
        peers.client_config(peer, [route])
        if role == "client"
        else peers.server_config(peer, [route])
    )
    await stack.enter_async_context(
        peers.open_peer(peer, role, config, directory, [route.port])
    )


@asynccontextmanager
async def open_chain(case: Case, directory: Path, tap: Tap) -> AsyncIterator[int]:
    """Run both sides of ``case``; yield the client side's SOCKS5 port.

    The client reaches the server through ``tap`` when ``tapped(case)``.
    """
    socks_port, vmess_port = peers.free_ports(2)
    account = account_for(case)
    async with AsyncExitStack() as stack:
        server_route = peers.Route(port=vmess_port, account=account)
        await _start_side(stack, case, "server", server_route, directory)
        if tapped(case):
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            await nursery.start(serve_tap, vmess_port, tap)
        client_route = peers.Route(
            port=socks_port,
            account=account,
            server_port=tap.port if tapped(case) else vmess_port,
        )
        await _start_side(stack, case, "client", client_route, directory)
        yield socks_port


async def exchange_tcp(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Send ``data`` while reading the echo; return what came back."""
    received = bytearray()

    async def send_all() -> None:
        view = memoryview(data)
        for start in range(0, len(view), SEND_SLICE):
            await stream.send_all(view[start : start + SEND_SLICE])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        while len(received) < len(data):
            chunk = await stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                break
            received += chunk
    return bytes(received)


async def check_tcp(case: Case, socks_port: int, target_port: int) -> None:
    """CONNECT through the chain, ``case.streams`` at once; compare each echo.

    Each stream carries different bytes, so crossed streams cannot pass.
    """

    async def one_stream(index: int) -> None:
        data = payload(case.payload, f"{case}-{index}")
        stream = await socks5.open_connect(
            peers.LOOPBACK, socks_port, case.target, target_port
        )
        async with stream:
            received = await exchange_tcp(stream, data)
        assert len(received) == len(data), f"stream {index}"
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest(), (
            f"stream {index}"
        )

    async with trio.open_nursery() as nursery:
        for index in range(case.streams):
            nursery.start_soon(one_stream, index)


async def check_udp(
    case: Case, socks_port: int, target_host: str, target_port: int
) -> None:
    """UDP ASSOCIATE through the chain; every datagram must echo intact.

    First the path is shown to be up (a peer may bind its UDP relay only
    after the TCP port the harness waited for: one probe a half second
    until one echoes, not counted); then no datagram is retried."""
    async with await socks5.open_udp_associate(peers.LOOPBACK, socks_port) as udp:
        await udp_path_ready(udp, target_host, target_port)
        for size in case.udp_sizes:
            for round_ in range(DATAGRAM_ROUNDS):
                datagram = payload(size, f"{case}-{size}-{round_}")
                await udp.send_to(target_host, target_port, datagram)
                echoed = b""
                with trio.move_on_after(DATAGRAM_WAIT) as waiting:
                    while echoed in (b"", UDP_PROBE):  # a late probe's echo
                        _, _, echoed = await udp.receive_from()
                assert not waiting.cancelled_caught, (
                    f"no echo of a {size}-byte datagram (round {round_})"
                )
                assert len(echoed) == size
                assert echoed == datagram


async def udp_path_ready(
    udp: socks5.UdpAssociation, target_host: str, target_port: int
) -> None:
    """Send a probe every half second until its echo comes back."""
    with trio.fail_after(peers.STARTUP_SECONDS):
        while True:
            await udp.send_to(target_host, target_port, UDP_PROBE)
            with trio.move_on_after(0.5):
                while (await udp.receive_from())[2] != UDP_PROBE:
                    pass
                return


def check_header(case: Case, tap: Tap) -> None:
    """One VMess connection per stream, each with the header kind of the case."""
    assert len(tap.openings) == case.streams, f"VMess connections: {tap.openings}"
    expected = "legacy" if case.legacy else "aead"
    for opening in tap.openings:
        kind = header_kind(bytes(opening), USER_ID, case.alter_id, time.time())
        assert kind == expected, f"a request header was {kind}, not {expected}"


def require_ipv6_loopback() -> None:
    """Skip (fail under CI) when ::1 cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        problem = f"no IPv6 loopback on this machine: {exc}"
        if peers.in_ci():
            pytest.fail(problem)
        pytest.skip(problem)


async def check_download(case: Case, socks_port: int, target_port: int) -> None:
    """CONNECT to a source that sends and closes; read until a clean EOF."""
    expected = payload(case.payload, str(case))
    stream = await socks5.open_connect(
        peers.LOOPBACK, socks_port, case.target, target_port
    )
    received = bytearray()
    async with stream:
        while chunk := await stream.receive_some(RECEIVE_SIZE):
            received += chunk
    assert len(received) == len(expected)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()


async def run_case(case: Case, directory: Path) -> None:
    """Start a target, the chain of ``case``, and check the traffic."""
    if case.target == "::1":
        require_ipv6_loopback()
    target_host = "::1" if case.target == "::1" else peers.LOOPBACK
    tap = Tap()
    async with trio.open_nursery() as nursery:
        if case.traffic == "udp":
            target_port = await nursery.start(echo.serve_udp_echo, target_host)
        elif case.traffic == "download":
            source = payload(case.payload, str(case))
            target_port = await nursery.start(
                echo.serve_tcp_source, target_host, source
            )
        else:
            target_port = await nursery.start(echo.serve_tcp_echo, target_host)
        async with open_chain(case, directory, tap) as socks_port:
            if case.traffic == "udp":
                await check_udp(case, socks_port, target_host, target_port)
            elif case.traffic == "download":
                await check_download(case, socks_port, target_port)
            else:
                await check_tcp(case, socks_port, target_port)
        nursery.cancel_scope.cancel()
    if tapped(case):
        check_header(case, tap)
