"""Mux.Cool and XUDP through vtrio's own server (server.run) over loopback.

A VMess client tunnel with command 3 carries frames from the codec-based Mux
client to the runtime's vmess inbound, which hands them to serve_mux and dials
through the dispatcher and the freedom outbound to loopback echo targets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import uuid

import pytest
import trio

from tests.net.test_mux_helpers import MuxClient
from tests.support.echo import serve_tcp_echo, serve_udp_echo
from vtrio import server
from vtrio.config import model
from vtrio.net.vmess_stream import VMessStream
from vtrio.protocol.instruction import Command, Request
from vtrio.protocol.mux import Frame, Network, Status, stream_frames

LOOPBACK = "127.0.0.1"
LOCAL = ipaddress.IPv4Address(LOOPBACK)
USER = model.VMessUser(uuid.UUID("0f3c2b5e-4a1d-4c7e-9b8a-6d5e4f3a2b1c"), email="m@x")


def server_config() -> model.Config:
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="vmess-in",
                protocol="vmess",
                listen=LOOPBACK,
                ports=(0,),
                settings=model.VMessInboundSettings(users=(USER,)),
            ),
        ),
        outbounds=(model.Outbound("direct", "freedom", model.FreedomSettings()),),
    )


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"mux %d" % seed).digest(size)


@pytest.mark.parametrize("security", [model.Security.AES_128_GCM, model.Security.ZERO])
async def test_tcp_udp_and_xudp_sub_sessions_through_vtrio_server(
    security: model.Security, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vtrio.net.mux")
    sizes = {1: 300_000, 2: 20_000}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.run, server_config())
            tcp_echo = await nursery.start(serve_tcp_echo, LOOPBACK)
            udp_a, udp_b = [await nursery.start(serve_udp_echo, LOOPBACK) for _ in "ab"]
            transport = await trio.open_tcp_stream(*bound["vmess-in"][0])
            user = model.VMessUser(USER.id, security=security)
            client = MuxClient(
                VMessStream.client(transport, user, Request(Command.MUX))
            )

            # Two TCP sub-sessions, interleaved, larger than one frame.
            await client.send(
                *(
                    Frame(
                        i, Status.NEW, network=Network.TCP, address=LOCAL, port=tcp_echo
                    )
                    for i in sizes
                )
            )

            async def upload() -> None:
                for i, size in sizes.items():
                    for frame in stream_frames(i, payload(size, i)):
                        await client.stream.send_all(frame)

            # A plain Mux UDP sub-session and an XUDP one (session 0).
            await client.send(
                Frame(
                    3,
                    Status.NEW,
                    b"plain",
                    network=Network.UDP,
                    address=LOCAL,
                    port=udp_a,
                ),
                Frame(
                    0,
                    Status.NEW,
                    b"to a",
                    network=Network.UDP,
                    address=LOCAL,
                    port=udp_a,
                ),
                Frame(
                    0,
                    Status.KEEP,
                    b"to b",
                    network=Network.UDP,
                    address=LOCAL,
                    port=udp_b,
                ),
            )
            nursery.start_soon(upload)
            received = {i: bytearray() for i in sizes}
            datagrams: list[Frame] = []
            while len(datagrams) < 3 or any(
                len(received[i]) < size for i, size in sizes.items()
            ):
                frame = await client.receive()
                assert frame.status is Status.KEEP, frame
                assert frame.data is not None
                if frame.session_id in received:
                    assert frame.address is None
                    received[frame.session_id] += frame.data
                else:
                    datagrams.append(frame)
            for i, size in sizes.items():
                assert (
                    hashlib.sha256(received[i]).digest()
                    == hashlib.sha256(payload(size, i)).digest()
                )
            assert sorted(datagrams, key=lambda f: (f.session_id, f.data or b"")) == [
                Frame(
                    0,
                    Status.KEEP,
                    b"to a",
                    network=Network.UDP,
                    address=LOCAL,
                    port=udp_a,
                ),
                Frame(
                    0,
                    Status.KEEP,
                    b"to b",
                    network=Network.UDP,
                    address=LOCAL,
                    port=udp_b,
                ),
                Frame(3, Status.KEEP, b"plain"),
            ]

            # The client ends session 1; a late Keep for it is answered with End.
            await client.send(Frame(1, Status.END), Frame(1, Status.KEEP, b"late"))
            assert await client.receive() == Frame(1, Status.END)
            # A refused destination ends its session with the Error option.
            with socket.socket() as unused:  # bound, never listening: refused
                unused.bind((LOOPBACK, 0))
                refused = unused.getsockname()[1]
                await client.send(
                    Frame(
                        9,
                        Status.NEW,
                        b"x",
                        network=Network.TCP,
                        address=LOCAL,
                        port=refused,
                    )
                )
                assert await client.receive() == Frame(9, Status.END, error=True)
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    opened = [r.getMessage() for r in caplog.records if "opened" in r.getMessage()]
    assert len(opened) == 5
