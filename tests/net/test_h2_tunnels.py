"""The HTTP/2 tunnel server against a raw HTTP/2 client on a real socket:
what a hostile client cannot make it do."""

from __future__ import annotations

import functools
import struct

import pytest
import trio
import trio.testing

from vtrio.config.model import GrpcSettings, H2Keepalive
from vtrio.net.transport.h2 import GrpcFlavor, H2Client, H2Tunnel, serve_h2
from vtrio.net.transport.tcp import from_trio_stream
from vtrio.protocol import http2
from vtrio.protocol.http2 import ErrorCode, H2Connection

FLAVOR = GrpcFlavor(GrpcSettings(service_name="svc"))


def cancel(stream_id: int) -> bytes:
    """An RST_STREAM (CANCEL) frame."""
    return struct.pack("!IBII", 4 << 8 | 3, 0, stream_id, ErrorCode.CANCEL)


async def test_rapidly_reset_streams_do_not_multiply_running_tunnels() -> None:
    running: list[H2Tunnel] = []

    async def handle(call: H2Tunnel) -> None:
        running.append(call)
        await trio.sleep_forever()  # a tunnel that outlives its stream

    async def serve(stream: trio.SocketStream) -> None:
        await serve_h2(FLAVOR, from_trio_stream(stream), handle, 10)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            client = H2Connection(client=True)
            for _ in range(http2.MAX_CONCURRENT_STREAMS + 5):
                stream_id = client.open_stream()
                client.send_headers(stream_id, FLAVOR.request("x:1"))
                # ... and at once gone again (written by hand: the core would
                # forget the stream, and the server's answer with it).
                await stream.send_all(client.data_to_send() + cancel(stream_id))
            # The server answers a PING after every frame before it.
            await stream.send_all(struct.pack("!IBI", 8 << 8 | 6, 0, 0) + b"12345678")
            answered = b""
            while struct.pack("!IBI", 8 << 8 | 6, 1, 0) + b"12345678" not in answered:
                answered += await stream.receive_some()
            await trio.testing.wait_all_tasks_blocked()
            assert len(running) == http2.MAX_CONCURRENT_STREAMS
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def serve_deaf(stream: trio.SocketStream) -> None:
    """An HTTP/2 server that answers the first flight, then reads nothing."""
    server = H2Connection(client=False)
    server.receive_data(await stream.receive_some())
    await stream.send_all(server.data_to_send())
    await trio.sleep_forever()


async def test_an_unanswered_keepalive_ping_breaks_the_tunnels() -> None:
    keepalive = H2Keepalive(idle=0.2, timeout=0.3)
    flavor = GrpcFlavor(GrpcSettings(service_name="svc", keepalive=keepalive))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve_deaf, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]

            async def connect(host: str, port: int) -> trio.abc.Stream:
                return await trio.open_tcp_stream(host, port)

            client = H2Client(flavor, connect)
            client.run_in(nursery)
            call = await client.open("127.0.0.1", port)
            with pytest.raises(trio.BrokenResourceError, match="keepalive PING"):
                await call.receive_some()
            nursery.cancel_scope.cancel()


async def test_answered_keepalive_pings_keep_an_idle_tunnel() -> None:
    keepalive = H2Keepalive(idle=0.1, timeout=0.5)
    flavor = GrpcFlavor(GrpcSettings(service_name="svc", keepalive=keepalive))

    async def echo(call: H2Tunnel) -> None:
        while data := await call.receive_some():
            await call.send_all(data)

    async def serve(stream: trio.SocketStream) -> None:
        await serve_h2(flavor, from_trio_stream(stream), echo, 10)

    async def connect(host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            client = H2Client(flavor, connect)
            client.run_in(nursery)
            call = await client.open("127.0.0.1", listeners[0].socket.getsockname()[1])
            await call.send_all(b"first")
            assert await call.receive_some() == b"first"
            await trio.sleep(1.0)  # ten idle periods: ten PINGs, all answered
            await call.send_all(b"later")
            assert await call.receive_some() == b"later"
            nursery.cancel_scope.cancel()
