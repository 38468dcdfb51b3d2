"""serve_mux over in-memory streams, driven by a Mux client written with the codec."""

from __future__ import annotations

import hashlib
import ipaddress
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from tests.net.test_mux_helpers import MuxClient
from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.mux import serve_mux
from vtrio.protocol.address import Address
from vtrio.protocol.mux import (
    MAX_STREAM_FRAME_DATA,
    Frame,
    Network,
    Status,
    encode_frame,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from vtrio.protocol.sniff import Sniffed

LOCAL = ipaddress.IPv4Address("127.0.0.1")
OTHER = ipaddress.IPv4Address("127.0.0.2")


async def echo(stream: trio.abc.HalfCloseableStream) -> None:
    """Echo until EOF, then half-close back."""
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()


class FakePackets:
    """A PacketConnection whose traffic the test sees and injects."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address, int]] = []
        self.inject, self._replies = trio.open_memory_channel[
            tuple[bytes, Address, int]
        ](8)
        self.closed = False

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append((payload, address, port))
        # Echo every datagram back from where it went.
        await self.inject.send((payload[::-1], address, port))

    async def receive_from(self) -> tuple[bytes, Address, int]:
        return await self._replies.receive()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True


class FakeDispatch:
    """Dials in-memory echo servers; refuses port 1."""

    sniffs = False

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.dialed: list[tuple[Address, int]] = []
        self.upstream_eof = trio.Event()
        self.packets: list[FakePackets] = []

    async def dial_tcp(
        self, address: Address, port: int, sniffed: Sniffed | None = None
    ) -> trio.abc.HalfCloseableStream:
        del sniffed
        await trio.lowlevel.checkpoint()
        self.dialed.append((address, port))
        if port == 1:
            raise DialError("connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, theirs, port)
        return ours

    async def _serve(self, stream: trio.abc.HalfCloseableStream, port: int) -> None:
        if port == 2:  # says hello and closes
            async with stream:
                await stream.send_all(b"hello")
            return
        if port == 3:  # reports the client's EOF and stays silent
            async with stream:
                assert await stream.receive_some(10) == b"up"
                assert await stream.receive_some(10) == b""
                self.upstream_eof.set()
                await trio.sleep_forever()
        await echo(stream)

    async def open_udp(self, address: Address, port: int) -> FakePackets:
        await trio.lowlevel.checkpoint()
        self.dialed.append((address, port))
        self.packets.append(FakePackets())
        return self.packets[-1]


@asynccontextmanager
async def mux_session(**kwargs: float) -> AsyncIterator[tuple[MuxClient, FakeDispatch]]:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        dispatch = FakeDispatch(nursery)
        nursery.start_soon(lambda: serve_mux(server_end, dispatch, **kwargs))  # type: ignore[arg-type]
        yield MuxClient(client_end), dispatch
        nursery.cancel_scope.cancel()


def new_tcp(session_id: int, port: int, data: bytes | None = None) -> Frame:
    return Frame(
        session_id, Status.NEW, data, network=Network.TCP, address=LOCAL, port=port
    )


async def test_concurrent_tcp_sessions_echo_in_8k_frames() -> None:
    payloads = {1: bytes(range(256)) * 100, 2: b"second" * 5000}
    with trio.fail_after(5):
        async with mux_session() as (client, dispatch):
            await client.send(new_tcp(1, 80, payloads[1][:100]), new_tcp(2, 81))
            await client.send(
                Frame(1, Status.KEEP, payloads[1][100:]),
                Frame(2, Status.KEEP, payloads[2]),
            )
            received = {1: b"", 2: b""}
            sizes = []
            while any(len(received[i]) < len(payloads[i]) for i in received):
                frame = await client.receive()
                assert frame.status is Status.KEEP
                assert frame.data is not None
                sizes.append(len(frame.data))
                received[frame.session_id] += frame.data
            assert max(sizes) <= MAX_STREAM_FRAME_DATA
            for i in received:
                assert (
                    hashlib.sha256(received[i]).digest()
                    == hashlib.sha256(payloads[i]).digest()
                )
            assert sorted(dispatch.dialed, key=str) == [(LOCAL, 80), (LOCAL, 81)]


async def test_destination_close_sends_end_without_error() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, _):
            await client.send(new_tcp(5, 2))
            assert await client.receive() == Frame(5, Status.KEEP, b"hello")
            assert await client.receive() == Frame(5, Status.END)


async def test_client_end_half_closes_destination_and_gets_no_answer() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, dispatch):
            await client.send(new_tcp(3, 3, b"up"), Frame(3, Status.END))
            await dispatch.upstream_eof.wait()
            # The session is gone: a Keep for it is answered with End, and the
            # only frame we ever get back is that End.
            await client.send(Frame(3, Status.KEEP, b"late"))
            assert await client.receive() == Frame(3, Status.END)


async def test_dial_failure_ends_with_error_option() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, _):
            await client.send(new_tcp(9, 1, b"x"))
            assert await client.receive() == Frame(9, Status.END, error=True)


async def test_unknown_session_keep_alive_and_refusal_over_the_limit() -> None:
    with trio.fail_after(5):
        async with mux_session(max_sessions=1) as (client, _):
            await client.send(
                Frame(40, Status.KEEP),  # no data: ignored
                Frame(0, Status.KEEP_ALIVE, b"ignored"),
                Frame(41, Status.KEEP, b"?"),
            )
            assert await client.receive() == Frame(41, Status.END)
            await client.send(new_tcp(1, 80), new_tcp(2, 80, b"x"))
            assert await client.receive() == Frame(2, Status.END, error=True)
            await client.send(Frame(1, Status.KEEP, b"still"))
            assert await client.receive() == Frame(1, Status.KEEP, b"still")


async def test_plain_mux_udp_sends_to_the_new_destination() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, dispatch):
            new = Frame(
                4, Status.NEW, b"one", network=Network.UDP, address=LOCAL, port=53
            )
            await client.send(new, Frame(4, Status.KEEP, b"two"))
            assert await client.receive() == Frame(4, Status.KEEP, b"eno")
            assert await client.receive() == Frame(4, Status.KEEP, b"owt")
            assert dispatch.packets[0].sent == [
                (b"one", LOCAL, 53),
                (b"two", LOCAL, 53),
            ]
            await client.send(Frame(4, Status.END))
            await client.send(Frame(4, Status.KEEP, b"three"))
            assert await client.receive() == Frame(4, Status.END)
            assert dispatch.packets[0].closed


async def test_xudp_per_packet_destinations_and_reply_sources() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, dispatch):
            await client.send(
                Frame(
                    0, Status.NEW, b"a", network=Network.UDP, address=LOCAL, port=1000
                ),
                Frame(
                    0, Status.KEEP, b"bc", network=Network.UDP, address=OTHER, port=2000
                ),
                Frame(
                    0,
                    Status.KEEP,
                    b"def",
                    network=Network.UDP,
                    address="example.com",
                    port=3000,
                ),
            )
            replies = [await client.receive() for _ in range(3)]
            assert replies == [
                Frame(
                    0, Status.KEEP, b"a", network=Network.UDP, address=LOCAL, port=1000
                ),
                Frame(
                    0, Status.KEEP, b"cb", network=Network.UDP, address=OTHER, port=2000
                ),
                Frame(
                    0,
                    Status.KEEP,
                    b"fed",
                    network=Network.UDP,
                    address="example.com",
                    port=3000,
                ),
            ]
            assert [(a, p) for _, a, p in dispatch.packets[0].sent] == [
                (LOCAL, 1000),
                (OTHER, 2000),
                ("example.com", 3000),
            ]


async def test_idle_session_is_ended(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(100):
        async with mux_session(session_idle=30) as (client, _):
            await client.send(new_tcp(6, 80, b"ping"))
            assert await client.receive() == Frame(6, Status.KEEP, b"ping")
            start = trio.current_time()
            assert await client.receive() == Frame(6, Status.END)
            assert 30 <= trio.current_time() - start < 31


async def test_duplicate_new_is_a_protocol_error() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            dispatch = FakeDispatch(nursery)
            await client_end.send_all(encode_frame(new_tcp(1, 80)) * 2)
            with pytest.RaisesGroup(RemoteProtocolError, flatten_subgroups=True):
                await serve_mux(server_end, dispatch)
            nursery.cancel_scope.cancel()


async def test_client_eof_returns_and_closes_sub_sessions() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            dispatch = FakeDispatch(nursery)
            client = MuxClient(client_end)
            await client.send(
                Frame(7, Status.NEW, b"x", network=Network.UDP, address=LOCAL, port=9)
            )
            await client_end.send_eof()
            await serve_mux(server_end, dispatch)
            assert dispatch.packets[0].closed
            nursery.cancel_scope.cancel()


async def test_global_id_makes_any_session_xudp_frames_may_come_bytewise() -> None:
    with trio.fail_after(5):
        async with mux_session() as (client, _):
            new = Frame(
                5,
                Status.NEW,
                b"xy",
                network=Network.UDP,
                address=OTHER,
                port=7,
                global_id=bytes(8),
            )
            for byte in encode_frame(new):
                await client.stream.send_all(bytes((byte,)))
            assert await client.receive() == Frame(
                5, Status.KEEP, b"yx", network=Network.UDP, address=OTHER, port=7
            )
