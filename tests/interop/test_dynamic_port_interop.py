"""Dynamic ports against v2ray 4.34, in both directions, AEAD and alterId 4.

* v2ray client -> vtrio server with a detour: after the first connection the
  v2ray client round-robins over the main port and the detour accounts it was
  given, so later connections arrive on the detour listeners.
* vtrio client -> v2ray server with ``detour`` and a ``random`` allocation:
  the client's picker learns v2ray's SwitchAccount, and later connections to a
  port of v2ray's detour range carry checksummed data end to end.
"""

from __future__ import annotations

import functools
import hashlib
import random
import socket
import time
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
)
from tests.net.test_dynamic_port import DetourListeners, detour_inbound
from tests.net.test_mux_helpers import (
    VMessTestServer,
    receive_exactly,
    socks_request,
    tcp_echo,
    vmess_echo,
)
from vtrio.config.model import VMessUser
from vtrio.net.dynamic_port import DetourPorts, DynamicServers, Endpoint
from vtrio.protocol.instruction import SecurityType
from vtrio.protocol.validator import UserValidator

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

USER = uuid.UUID("5783a3e7-e373-51cd-8642-c83782b807c5")
CONNECTIONS = 6


def free_port_range(count: int) -> range:
    """``count`` consecutive loopback ports that were all free a moment ago."""
    rng = random.Random()
    for _ in range(50):
        start = rng.randrange(20000, 60000 - count)
        sockets = []
        try:
            for port in range(start, start + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return range(start, start + count)
    raise RuntimeError("no free port range")


async def socks_echo(socks_port: int, echo_port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream(LOOPBACK, socks_port)
    async with stream:
        await socks_request(stream, 1, LOOPBACK, echo_port)
        await stream.send_all(payload)
        return await receive_exactly(stream, len(payload))


@pytest.mark.parametrize("alter_id", [0, 4])
async def test_v2ray_client_follows_vtrio_detour(tmp_path: Path, alter_id: int) -> None:
    peer = require_peer("v2ray", "4.34")
    socks_port, main_port, *ports = free_ports(6)
    config = client_config(
        peer,
        [
            Route(
                socks_port, Account(str(USER), alter_id=alter_id), server_port=main_port
            )
        ],
    )
    detour = DetourPorts(detour_inbound(ports, concurrency=2, alter_id=alter_id))
    main = VMessTestServer(
        UserValidator([VMessUser(USER, alter_id=alter_id)], now=int(time.time())),
        lambda user: detour.switch_account(user, now=int(time.time())),
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = DetourListeners(nursery)
            await nursery.start(
                functools.partial(detour.run, listeners, now=lambda: int(time.time()))
            )
            (echo,) = await nursery.start(
                functools.partial(trio.serve_tcp, tcp_echo, 0, host=LOOPBACK)
            )
            await nursery.start(
                functools.partial(trio.serve_tcp, main.handle, main_port, host=LOOPBACK)
            )
            async with open_peer(peer, "client", config, tmp_path, [socks_port]):
                for index in range(CONNECTIONS):
                    payload = hashlib.sha256(b"%d" % index).digest() * 2000
                    echoed = await socks_echo(
                        socks_port, echo.socket.getsockname()[1], payload
                    )
                    assert (
                        hashlib.sha256(echoed).digest()
                        == hashlib.sha256(payload).digest()
                    )
            nursery.cancel_scope.cancel()
    on_detour = [h for server in listeners.servers.values() for h in server.accepted]
    assert len(main.accepted) + len(on_detour) == CONNECTIONS
    assert on_detour, "v2ray never used the detour account"
    # v2ray gives a switched account aes-128-cfb; the header mode follows the
    # alterId the command carried.
    assert {h.security for h in on_detour} == {SecurityType.LEGACY}
    assert {h.legacy for h in on_detour} == {alter_id > 0}
    assert {h.user.alter_id for h in on_detour} == {alter_id}


def v2ray_detour_server(
    main_port: int, ports: range, alter_id: int
) -> dict[str, object]:
    return {
        "log": {"loglevel": "debug"},
        "inbounds": [
            {
                "tag": "main",
                "listen": LOOPBACK,
                "port": main_port,
                "protocol": "vmess",
                "settings": {
                    "clients": [
                        {"id": str(USER), "alterId": alter_id, "email": "alice@x"}
                    ],
                    "detour": {"to": "dynamic"},
                },
            },
            {
                "tag": "dynamic",
                "listen": LOOPBACK,
                "port": f"{ports.start}-{ports.stop - 1}",
                "protocol": "vmess",
                "settings": {"default": {"alterId": alter_id, "level": 0}},
                "allocate": {"strategy": "random", "concurrency": 2, "refresh": 5},
            },
        ],
        "outbounds": [{"protocol": "freedom"}],
    }


@pytest.mark.parametrize("alter_id", [0, 4])
async def test_vtrio_client_follows_v2ray_detour(tmp_path: Path, alter_id: int) -> None:
    peer = require_peer("v2ray", "4.34")
    (main_port,) = free_ports(1)
    ports = free_port_range(10)
    config = v2ray_detour_server(main_port, ports, alter_id)
    user = VMessUser(USER, alter_id=alter_id)
    servers = DynamicServers(Endpoint(LOOPBACK, main_port, user))
    dialled = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (echo,) = await nursery.start(
                functools.partial(trio.serve_tcp, tcp_echo, 0, host=LOOPBACK)
            )
            async with open_peer(peer, "server", config, tmp_path, [main_port]):
                for index in range(CONNECTIONS):
                    endpoint = servers.pick(trio.current_time())
                    dialled.append(endpoint)
                    payload = hashlib.sha256(b"%d" % index).digest() * 2000
                    echoed, switch = await vmess_echo(
                        endpoint.host,
                        endpoint.port,
                        endpoint.user,
                        echo.socket.getsockname()[1],
                        payload,
                    )
                    assert (
                        hashlib.sha256(echoed).digest()
                        == hashlib.sha256(payload).digest()
                    )
                    if endpoint.port == main_port:
                        # v2ray answers every accepted client with a command.
                        assert switch is not None
                        assert switch.port in ports
                        assert switch.alter_id == alter_id
                        servers.learn(switch, endpoint, trio.current_time())
            nursery.cancel_scope.cancel()
    on_detour = [e for e in dialled if e.port != main_port]
    assert dialled[0].port == main_port
    assert len(on_detour) >= CONNECTIONS // 3
    assert all(e.port in ports and e.user.id != USER for e in on_detour)
