"""Transparent proxying: a followRedirect dokodemo-door behind netfilter's
REDIRECT (TCP) and TPROXY (UDP), outbound socket marks, transparent
listeners; and their config errors.

The end-to-end tests divert loopback traffic with real iptables rules (they
need root and the nat / mangle tables, and are skipped without them): a
client sends to the target, the kernel hands the traffic to vtrio, and vtrio
sends it on with its mark, which the rule lets through.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest
import trio

from tests.config.test_loader import errors_of
from tests.integration.test_chain import LOOPBACK
from vtrio import server
from vtrio.config import loads, model
from vtrio.net.transport import connect_tcp, dial, open_listeners
from vtrio.net.transport.tcp import TCPStream
from vtrio.net.transport.transparent import (
    IP_TRANSPARENT,
    SO_MARK,
    original_destination,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

MARK = 0x7A


def door(**extra: object) -> dict[str, object]:
    inbound: dict[str, object] = {
        "tag": "door",
        "listen": LOOPBACK,
        "port": 10800,
        "protocol": "dokodemo-door",
        "settings": {"network": "tcp", "followRedirect": True},
        "streamSettings": {"sockopt": {"tproxy": "redirect"}},
    }
    inbound.update(extra)
    return {
        "inbounds": [inbound],
        "outbounds": [
            {
                "protocol": "freedom",
                "streamSettings": {"sockopt": {"mark": MARK}},
            }
        ],
    }


def test_a_follow_redirect_door_needs_no_address_and_keeps_its_modes() -> None:
    config = loads(json.dumps(door()), source="t.json")
    inbound = config.inbounds[0]
    assert inbound.settings == model.DokodemoInboundSettings(
        address=None, port=None, networks=frozenset({"tcp"}), follow_redirect=True
    )
    assert inbound.stream.tproxy == "redirect"
    assert config.outbounds[0].stream.mark == MARK


def test_transparent_settings_that_cannot_work_are_refused_by_path() -> None:
    udp = door(settings={"network": "tcp,udp", "followRedirect": True})
    assert errors_of(udp) == [
        (
            "$.inbounds[0].settings.network",
            'followRedirect over UDP needs streamSettings.sockopt.tproxy "tproxy"',
        )
    ]
    tproxy = door(
        settings={"network": "tcp,udp", "followRedirect": True},
        streamSettings={"sockopt": {"tproxy": "tproxy"}},
    )
    assert loads(json.dumps(tproxy), source="t.json").inbounds[0].stream.tproxy == (
        "tproxy"
    )
    mode = door(streamSettings={"sockopt": {"tproxy": "divert"}})
    assert errors_of(mode) == [
        (
            "$.inbounds[0].streamSettings.sockopt.tproxy",
            "expected off, redirect or tproxy, not 'divert'",
        )
    ]
    mark = door()
    mark["outbounds"] = [
        {"protocol": "freedom", "streamSettings": {"sockopt": {"mark": -1}}}
    ]
    assert errors_of(mark) == [
        (
            "$.outbounds[0].streamSettings.sockopt.mark",
            "expected a mark from 0 to 4294967295",
        )
    ]
    plain = door(settings={"network": "tcp"})
    assert errors_of(plain) == [
        ("$.inbounds[0].settings", "dokodemo-door needs an address and a port")
    ]


async def test_a_connection_that_was_not_diverted_has_no_original_destination() -> None:
    listeners = await open_listeners(model.StreamSettings(), LOOPBACK, 0)
    port = listeners[0].socket.getsockname()[1]
    client = await connect_tcp(LOOPBACK, port)
    accepted = await listeners[0].accept()
    async with client, accepted, listeners[0]:
        # Without a NAT entry there is nothing to follow: never the proxy itself.
        assert original_destination(accepted.socket, "redirect") is None
        assert original_destination(accepted.socket, "off") is None
        # TPROXY: the local address is where the client was going.
        assert original_destination(accepted.socket, "tproxy") == (LOOPBACK, port)


def _needs_net_admin(action: str) -> None:
    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, SO_MARK, 1)
    except PermissionError:
        pytest.skip(f"{action} needs CAP_NET_ADMIN")
    finally:
        probe.close()


async def test_outbound_sockets_carry_the_mark() -> None:
    _needs_net_admin("SO_MARK")
    listeners = await open_listeners(model.StreamSettings(), LOOPBACK, 0)
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        for host in (LOOPBACK, "localhost"):  # an IP literal, and a name
            client = await connect_tcp(host, port, mark=MARK)
            async with client, await listeners[0].accept():
                assert client.socket.getsockopt(socket.SOL_SOCKET, SO_MARK) == MARK
        # A VMess outbound's connection to its server, too.
        marked = model.StreamSettings(mark=MARK)
        dialled = await dial(marked, LOOPBACK, port)
        async with dialled, await listeners[0].accept():
            assert isinstance(dialled, TCPStream)
            assert dialled.socket.getsockopt(socket.SOL_SOCKET, SO_MARK) == MARK


async def test_a_tproxy_listener_is_transparent() -> None:
    _needs_net_admin("IP_TRANSPARENT")
    listeners = await open_listeners(model.StreamSettings(tproxy="tproxy"), LOOPBACK, 0)
    async with listeners[0]:
        sock = listeners[0].socket
        assert sock.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 1


@pytest.fixture
def divert() -> Iterator[list[list[str]]]:
    """Adds iptables nat rules given as argument lists; removes them after."""
    if shutil.which("iptables") is None:
        pytest.skip("no iptables")
    added: list[list[str]] = []
    yield added
    for table, *rule in reversed(added):
        subprocess.run(["iptables", "-t", table, "-D", *rule], check=False)


def _add_rule(added: list[list[str]], rule: list[str], table: str = "nat") -> None:
    done = subprocess.run(
        ["iptables", "-t", table, "-A", *rule], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"iptables {table} table unavailable: {done.stderr.strip()}")
    added.append([table, *rule])


async def serve_peer_port_echo(*, task_status: trio.TaskStatus[int]) -> None:
    """Answers each connection with the port it came from, then echoes."""

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            peer_port = stream.socket.getpeername()[1]
            await stream.send_all(f"{peer_port}\n".encode())
            while data := await stream.receive_some(1024):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


async def test_a_redirected_connection_goes_where_the_client_dialled(
    divert: list[list[str]],
) -> None:
    _needs_net_admin("REDIRECT")
    document = door(port=0)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(serve_peer_port_echo)
            config = loads(json.dumps(document), source="t.json")
            bound = await nursery.start(server.run, config)
            door_port = bound["door"][0][1]
            # Everything to the target is diverted to the door, except the
            # door's own marked connection to it.
            _add_rule(
                divert,
                [
                    "OUTPUT",
                    "-p", "tcp", "-d", LOOPBACK, "--dport", str(target),
                    "-m", "mark", "!", "--mark", str(MARK),
                    "-j", "REDIRECT", "--to-ports", str(door_port),
                ],
            )  # fmt: skip
            stream = await trio.open_tcp_stream(LOOPBACK, target)
            async with stream:
                own_port = stream.socket.getsockname()[1]
                await stream.send_all(b"through the door")
                received = b""
                while not received.endswith(b"door"):
                    if not (data := await stream.receive_some(1024)):
                        break  # vtrio could not follow the redirect
                    received += data
            peer_port, _, echoed = received.partition(b"\n")
            # The target was reached from vtrio's socket, not the client's.
            assert int(peer_port) != own_port
            assert echoed == b"through the door"
            nursery.cancel_scope.cancel()


async def test_diverted_datagrams_go_where_they_were_sent_and_answers_come_from_there(
    divert: list[list[str]],
) -> None:
    _needs_net_admin("TPROXY")
    # The "remote" peer: an address of the loopback network nothing else uses.
    remote_host = "127.0.0.2"
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as remote:
        # Shared with the answering socket vtrio binds there (as on a gateway,
        # where the address is not local at all).
        remote.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await remote.bind((remote_host, 0))
        remote_port = remote.getsockname()[1]
        document = door(
            port=0,
            settings={"network": "udp", "followRedirect": True},
            streamSettings={"sockopt": {"tproxy": "tproxy"}},
        )
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:

                async def answer() -> None:
                    while True:
                        data, peer = await remote.recvfrom(2048)
                        await remote.sendto(f"{peer[1]} ".encode() + data, peer)

                nursery.start_soon(answer)
                config = loads(json.dumps(document), source="t.json")
                bound = await nursery.start(server.run, config)
                door_port = bound["door"][0][1]
                _add_rule(
                    divert,
                    [
                        "PREROUTING", "-i", "lo",
                        "-p", "udp", "-d", remote_host, "--dport", str(remote_port),
                        "-m", "mark", "!", "--mark", str(MARK),
                        "-j", "TPROXY", "--on-ip", LOOPBACK,
                        "--on-port", str(door_port),
                    ],
                    table="mangle",
                )  # fmt: skip
                with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    await client.bind((LOOPBACK, 0))
                    own_port = client.getsockname()[1]
                    for payload in (b"first", b"second"):
                        await client.sendto(payload, (remote_host, remote_port))
                        data, sender = await client.recvfrom(2048)
                        peer_port, _, echoed = data.partition(b" ")
                        assert echoed == payload
                        # The answer names the remote, reached from vtrio's socket.
                        assert sender == (remote_host, remote_port)
                        assert int(peer_port) != own_port
                nursery.cancel_scope.cancel()
