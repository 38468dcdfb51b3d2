"""dokodemo-door: a fixed destination for TCP and UDP, directly or through VMess."""

from __future__ import annotations

import json
import socket

import pytest
import trio

from tests.config.test_loader import errors_of
from tests.integration.test_chain import LOOPBACK, USER_ID, server_config
from tests.interop.peers import free_ports
from tests.support.echo import serve_tcp_echo, serve_udp_echo
from vtrio import server
from vtrio.config import loads, model


def dokodemo_config(
    target_port: int, networks: frozenset[str], outbound: model.Outbound
) -> model.Config:
    return model.Config(
        inbounds=(
            model.Inbound(
                "door",
                "dokodemo-door",
                LOOPBACK,
                (0,),
                model.DokodemoInboundSettings(LOOPBACK, target_port, networks),  # type: ignore[arg-type]
            ),
        ),
        outbounds=(outbound,),
    )


DIRECT = model.Outbound("direct", "freedom", model.FreedomSettings())


async def test_tcp_goes_to_the_fixed_destination() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_tcp_echo, LOOPBACK)
            bound = await nursery.start(
                server.run, dokodemo_config(echo_port, frozenset({"tcp"}), DIRECT)
            )
            stream = await trio.open_tcp_stream(LOOPBACK, bound["door"][0][1])
            async with stream:
                await stream.send_all(b"door")
                assert await stream.receive_some(10) == b"door"
            nursery.cancel_scope.cancel()


async def serve_banner(*, task_status: trio.TaskStatus[int]) -> None:
    """A target that speaks first (as SMTP or SSH do)."""

    async def greet(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 ready\r\n")

    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(greet, listeners)


async def test_a_target_that_speaks_first_is_reached_at_once() -> None:
    """The door is accepted without waiting for the client's first bytes
    (inbounds whose client speaks first defer the accept until it has)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            banner_port = await nursery.start(serve_banner)
            bound = await nursery.start(
                server.run, dokodemo_config(banner_port, frozenset({"tcp"}), DIRECT)
            )
            stream = await trio.open_tcp_stream(LOOPBACK, bound["door"][0][1])
            async with stream:
                with trio.fail_after(0.5):
                    assert await stream.receive_some(64) == b"220 ready\r\n"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("through_vmess", [False, True], ids=["direct", "vmess"])
async def test_udp_datagrams_come_back_to_each_source(through_vmess: bool) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            echo_port = await nursery.start(serve_udp_echo, LOOPBACK)
            outbound = DIRECT
            if through_vmess:
                vmess = await nursery.start(server.run, server_config())
                outbound = model.Outbound(
                    "proxy",
                    "vmess",
                    model.VMessOutboundSettings(
                        (
                            model.VMessServer(
                                LOOPBACK,
                                vmess["vmess-in"][0][1],
                                (model.VMessUser(USER_ID),),
                            ),
                        )
                    ),
                )
            config = dokodemo_config(echo_port, frozenset({"udp"}), outbound)
            bound = await nursery.start(server.run, config)
            door = bound["door"][0]
            clients = [
                trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)
            ]
            for number, client in enumerate(clients):
                with client:
                    await client.bind((LOOPBACK, 0))
                    for size in (1, 700, 1400):
                        payload = bytes([number]) * size
                        await client.sendto(payload, door)
                        assert await client.recv(65535) == payload
            nursery.cancel_scope.cancel()


def port_map_door(ports: list[int], mapping: dict[str, str], **extra: object) -> str:
    return json.dumps(
        {
            "inbounds": [
                {
                    "tag": "door",
                    "listen": LOOPBACK,
                    "port": ",".join(map(str, ports)),
                    "protocol": "tunnel",  # Xray's name
                    "settings": {"network": "tcp,udp", "portMap": mapping, **extra},
                }
            ],
            "outbounds": [{"protocol": "freedom"}],
        }
    )


def test_port_map_entries_fill_in_from_the_inbound() -> None:
    text = port_map_door(
        [5555, 5556, 5557],
        {"5555": "1.1.1.1:7777", "5556": ":8888", "5557": "[::1]:"},
        address="example.com",
        port=53,
    )
    settings = loads(text, source="t.json").inbounds[0].settings
    assert isinstance(settings, model.DokodemoInboundSettings)
    assert [settings.target(port) for port in (5555, 5556, 5557, 5558)] == [
        ("1.1.1.1", 7777),
        ("example.com", 8888),
        ("::1", 53),
        ("example.com", 53),
    ]
    # Without the inbound's own address, an unmapped port goes nowhere.
    bare = loads(port_map_door([5555], {"5555": "1.1.1.1:7777"}), source="t.json")
    assert isinstance(bare.inbounds[0].settings, model.DokodemoInboundSettings)
    assert bare.inbounds[0].settings.target(5556) is None


@pytest.mark.parametrize(
    ("mapping", "where", "message"),
    [
        ({"http": "1.1.1.1:80"}, "http", "expected a listening port as the key"),
        ({"5555": "1.1.1.1"}, "5555", 'expected "address:port"'),
        ({"5555": ":"}, "5555", 'expected "address:port"'),
        ({"5555": "host:99999"}, "5555", 'expected "address:port"'),
    ],
)
def test_a_bad_port_map_entry_is_refused_by_path(
    mapping: dict[str, str], where: str, message: str
) -> None:
    [(path, text)] = errors_of(port_map_door([5555], mapping))
    assert path == f"$.inbounds[0].settings.portMap.{where}"
    assert text.startswith(message)


async def test_each_port_goes_where_the_port_map_says() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            tcp_echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            udp_echo = await nursery.start(serve_udp_echo, LOOPBACK)
            mapped, unmapped = free_ports(2)
            mapping = {str(mapped): f"{LOOPBACK}:{tcp_echo}"}
            text = port_map_door([mapped, unmapped], mapping, port=udp_echo)
            text = text.replace(
                '"settings": {', f'"settings": {{"address": "{LOOPBACK}", ', 1
            )
            await nursery.start(server.run, loads(text, source="t.json"))
            # TCP on the mapped port reaches the TCP echo ...
            stream = await trio.open_tcp_stream(LOOPBACK, mapped)
            async with stream:
                await stream.send_all(b"mapped")
                assert await stream.receive_some(10) == b"mapped"
            # ... UDP on the other port the inbound's own address and port.
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                await client.bind((LOOPBACK, 0))
                await client.sendto(b"unmapped", (LOOPBACK, unmapped))
                assert await client.recv(100) == b"unmapped"
            nursery.cancel_scope.cancel()


async def test_every_port_of_an_inbound_is_released_when_it_stops() -> None:
    ports = free_ports(3)
    text = port_map_door(ports, {}, address=LOOPBACK, port=9)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, loads(text, source="t.json"))
        nursery.cancel_scope.cancel()
    # Closed, not waiting for the garbage collector: each binds again at once.
    for port in ports:
        with socket.socket() as probe:
            probe.bind((LOOPBACK, port))
