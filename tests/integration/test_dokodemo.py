"""dokodemo-door: a fixed destination for TCP and UDP, directly or through VMess."""

from __future__ import annotations

import socket

import pytest
import trio

from tests.integration.test_chain import LOOPBACK, USER_ID, server_config
from tests.support.echo import serve_tcp_echo, serve_udp_echo
from vtrio import server
from vtrio.config import model


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
