"""Dynamic ports against v2ray 4.34, in both directions, AEAD and alterId 4.

* v2ray client -> vtrio server with a detour: after the first connection the
  v2ray client round-robins over the main port and the detour accounts it was
  given, so later tunnels show up in vtrio's access log under the detour
  inbound's tag.
* vtrio client -> v2ray server with ``detour`` and a ``random`` allocation:
  vtrio's vmess outbound learns v2ray's SwitchAccount, and later connections
  land on v2ray's detour ports; v2ray logs "pick detour handler" only for
  connections to its main inbound, so the rest arrived on the detour range.
All payloads are checksummed end to end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import socket
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
from tests.net.test_dynamic_port import access_lines, socks_client_config
from tests.support.echo import serve_tcp_echo
from tests.support.socks5 import open_connect, receive_exactly
from vtrio import server
from vtrio.config import loads
from vtrio.config.model import VMessUser

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

USER = uuid.UUID("5783a3e7-e373-51cd-8642-c83782b807c5")
CONNECTIONS = 6


def free_port_range(count: int) -> range:
    """``count`` consecutive loopback ports that were all free a moment ago.

    They lie below Linux's ephemeral range (32768-60999), so neither
    ``free_ports`` nor outgoing connections can pick one of them meanwhile.
    """
    rng = random.Random()
    for _ in range(50):
        start = rng.randrange(20000, 32768 - count)
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


async def echo_through_socks(socks_port: int, echo_port: int) -> None:
    """CONNECTIONS sequential checksummed echoes through a SOCKS inbound."""
    for index in range(CONNECTIONS):
        data = hashlib.sha256(b"%d" % index).digest() * 2000
        stream = await open_connect(LOOPBACK, socks_port, LOOPBACK, echo_port)
        async with stream:
            await stream.send_all(data)
            echoed = await receive_exactly(stream, len(data))
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


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
async def test_v2ray_client_follows_vtrio_detour(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, alter_id: int
) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.access")
    peer = require_peer("v2ray", "4.34")
    socks_port, main_port = free_ports(2)
    # vtrio reads the very v2ray config the other test gives v2ray.
    config = loads(
        json.dumps(v2ray_detour_server(main_port, free_port_range(4), alter_id))
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            await nursery.start(server.run, config)
            account = Account(str(USER), alter_id=alter_id)
            route = Route(socks_port, account, server_port=main_port)
            client = client_config(peer, [route])
            async with open_peer(peer, "client", client, tmp_path, [socks_port]):
                await echo_through_socks(socks_port, echo)
            nursery.cancel_scope.cancel()
    on_main = access_lines(caplog, "main")
    on_detour = access_lines(caplog, "dynamic")
    assert len(on_main) + len(on_detour) == CONNECTIONS
    assert len(on_detour) >= CONNECTIONS // 3, "v2ray never used the detour account"
    # The generated detour account carries the user's e-mail (spec 8.1).
    assert all("email: alice@x" in line for line in on_main + on_detour)


@pytest.mark.parametrize("alter_id", [0, 4])
async def test_vtrio_client_follows_v2ray_detour(tmp_path: Path, alter_id: int) -> None:
    peer = require_peer("v2ray", "4.34")
    (main_port,) = free_ports(1)
    ports = free_port_range(10)
    config = v2ray_detour_server(main_port, ports, alter_id)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            async with open_peer(
                peer, "server", config, tmp_path, [main_port]
            ) as v2ray:
                bound = await nursery.start(
                    server.run,
                    socks_client_config(main_port, VMessUser(USER, alter_id)),
                )
                await echo_through_socks(bound["socks-in"][0][1], echo)
                # v2ray's log lines are written as the connections end.
                await trio.sleep(0.2)
                log = v2ray.log_text()
            nursery.cancel_scope.cancel()
    requests = log.count("proxy/vmess/inbound: received request for tcp:")
    on_main = log.count("proxy/vmess/inbound: pick detour handler for port")
    assert requests == CONNECTIONS
    assert 1 <= on_main <= CONNECTIONS - CONNECTIONS // 3
