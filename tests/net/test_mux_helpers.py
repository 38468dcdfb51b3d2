"""Stand-in VMess server and client for the Mux and dynamic-port tests.

They drive the sans-IO ``ServerConnection`` / ``ClientConnection`` directly, so
serve_mux and the detour allocator can be checked against real peers before
vtrio's own inbound and outbound (the runtime) wire them in; they are kept
minimal on purpose (no timeouts, no drain, no logs). Also here: loopback echo
servers and a SOCKS5 client for CONNECT and UDP ASSOCIATE.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import struct
import time
from typing import TYPE_CHECKING

import trio

from vtrio.net.mux import serve_mux
from vtrio.protocol.connection import ClientConnection, ServerConnection
from vtrio.protocol.events import (
    NEED_DATA,
    Data,
    EndOfStream,
    Rejected,
    RequestHeader,
    ResponseHeader,
)
from vtrio.protocol.instruction import Command, Request

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.config.model import VMessUser
    from vtrio.protocol.address import Address
    from vtrio.protocol.commands import SwitchAccount
    from vtrio.protocol.validator import UserValidator

LOOPBACK = "127.0.0.1"


class ServerVMessStream(trio.abc.HalfCloseableStream):
    """The body of one accepted VMess connection as a byte stream."""

    def __init__(
        self,
        transport: trio.abc.HalfCloseableStream,
        conn: ServerConnection,
        command: SwitchAccount | None = None,
    ) -> None:
        self.transport = transport
        self.conn = conn
        self.command = command
        self.responded = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.transport.receive_some(65536))
            elif isinstance(event, Data):
                return event.data
            else:
                assert isinstance(event, EndOfStream), event
                return b""

    def _response(self) -> bytes:
        if self.responded:
            return b""
        self.responded = True
        return self.conn.send_response(self.command)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        header = self._response()
        await self.transport.send_all(header + self.conn.send_data(data))

    async def send_eof(self) -> None:
        header = self._response()
        await self.transport.send_all(header + self.conn.send_eof())

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport.aclose()


class UdpPackets:
    """A loopback UDP socket with a destination per datagram."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def send_to(self, payload: bytes, address: Address, port: int) -> None:
        await self.sock.sendto(payload, (str(address), port))

    async def receive_from(self) -> tuple[bytes, Address, int]:
        payload, (host, port) = await self.sock.recvfrom(65536)
        return payload, ipaddress.ip_address(host), port

    async def aclose(self) -> None:
        self.sock.close()
        await trio.lowlevel.checkpoint()


class DirectDispatch:
    """Sub-sessions go straight to their destinations, like freedom."""

    def __init__(self) -> None:
        self.tcp_dials = 0
        self.udp_opens = 0

    async def dial_tcp(
        self, address: Address, port: int
    ) -> trio.abc.HalfCloseableStream:
        self.tcp_dials += 1
        return await trio.open_tcp_stream(str(address), port)

    async def open_udp(self, address: Address, port: int) -> UdpPackets:
        self.udp_opens += 1
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind((LOOPBACK, 0))
        return UdpPackets(sock)


async def pump(
    source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream
) -> None:
    while data := await source.receive_some(65536):
        await sink.send_all(data)
    await sink.send_eof()


class VMessTestServer:
    """Accepts VMess connections: TCP goes direct, Mux goes to serve_mux.

    ``switch_account`` (the detour hook) makes the command each accepted
    client gets in its response header.
    """

    def __init__(
        self,
        validator: UserValidator,
        switch_account: Callable[[VMessUser], SwitchAccount | None] | None = None,
    ) -> None:
        self.validator = validator
        self.switch_account = switch_account
        self.dispatch = DirectDispatch()
        self.accepted: list[RequestHeader] = []
        self.rejected = 0

    async def handle(self, transport: trio.SocketStream) -> None:
        conn = ServerConnection(self.validator, now=int(time.time()), random=os.urandom)
        async with transport:
            while (event := conn.next_event()) is NEED_DATA:
                conn.receive_data(await transport.receive_some(65536))
            if isinstance(event, Rejected):
                self.rejected += 1
                return
            assert isinstance(event, RequestHeader), event
            self.accepted.append(event)
            command = None
            if self.switch_account is not None:
                command = self.switch_account(event.user)
            stream = ServerVMessStream(transport, conn, command)
            if event.command is Command.MUX:
                await serve_mux(stream, self.dispatch)
                return
            assert event.command is Command.TCP
            assert event.address is not None
            upstream = await self.dispatch.dial_tcp(event.address, event.port)
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(pump, stream, upstream)
                await pump(upstream, stream)


async def vmess_echo(
    host: str, port: int, user: VMessUser, target_port: int, payload: bytes
) -> tuple[bytes, SwitchAccount | None]:
    """One TCP request through a VMess server to an echo at ``target_port``.

    Sends ``payload`` with the header and reads until as many bytes came back
    (or the server ended), then closes without a half-close: v2ray would
    otherwise hold each tunnel for its ``uplinkOnly`` time.

    Returns:
        What came back and the response header's command.
    """
    conn = ClientConnection(
        user,
        Request(Command.TCP, ipaddress.IPv4Address(LOOPBACK), target_port),
        now=int(time.time()),
        random=os.urandom,
        machine=platform.machine(),
    )
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(conn.start(payload))
        received = bytearray()
        command = None
        while len(received) < len(payload):
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, ResponseHeader):
                command = event.command
            elif isinstance(event, Data):
                received += event.data
            else:
                assert isinstance(event, EndOfStream), event
                break
        return bytes(received), command


async def tcp_echo(stream: trio.SocketStream) -> None:
    """Echo, then half-close."""
    async with stream:
        await pump(stream, stream)


async def udp_echo(*, task_status: trio.TaskStatus[int]) -> None:
    """A UDP echo server on a loopback port, reported through ``started``."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((LOOPBACK, 0))
        task_status.started(sock.getsockname()[1])
        while True:
            payload, source = await sock.recvfrom(65536)
            await sock.sendto(payload, source)


async def receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = await stream.receive_some(count - len(data))
        assert more, f"EOF after {len(data)} of {count} bytes"
        data += more
    return data


async def socks_request(
    stream: trio.abc.Stream, command: int, host: str, port: int
) -> tuple[str, int]:
    """A SOCKS5 no-auth request (1 CONNECT, 3 UDP ASSOCIATE) to an IPv4 host.

    Returns:
        The bound address of the reply.
    """
    await stream.send_all(b"\x05\x01\x00")
    assert await receive_exactly(stream, 2) == b"\x05\x00"
    request = b"\x05" + bytes((command,)) + b"\x00\x01"
    request += ipaddress.IPv4Address(host).packed + struct.pack(">H", port)
    await stream.send_all(request)
    reply = await receive_exactly(stream, 10)
    assert reply[:4] == b"\x05\x00\x00\x01", reply
    return str(ipaddress.IPv4Address(reply[4:8])), struct.unpack(">H", reply[8:])[0]
