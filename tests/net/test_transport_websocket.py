"""WebSocketStream over in-memory streams: trio's generic stream checks and the
WebSocket-specific behaviour (lazy early-data upgrade, control frames, close codes).
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as ws_events
from wsproto.connection import ConnectionType

from vtrio.config.model import WebSocketSettings
from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.transport.http1 import default_host_header
from vtrio.net.transport.websocket import (
    WebSocketStream,
    accept_websocket,
    decode_early_data,
    dial_websocket,
    encode_early_data,
)

SETTINGS = WebSocketSettings(path="/ws")


async def upgraded_pair(
    client_transport: trio.abc.Stream,
    server_transport: trio.abc.Stream,
    settings: WebSocketSettings = SETTINGS,
) -> tuple[WebSocketStream, WebSocketStream]:
    streams: dict[str, WebSocketStream] = {}

    async def server() -> None:
        streams["server"] = await accept_websocket(settings, server_transport)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        streams["client"] = await dial_websocket(
            settings, client_transport, "example.com", 80, secure=False
        )
    return streams["client"], streams["server"]


async def memory_pair() -> tuple[WebSocketStream, WebSocketStream]:
    return await upgraded_pair(*trio.testing.memory_stream_pair())


async def lockstep_pair() -> tuple[WebSocketStream, WebSocketStream]:
    return await upgraded_pair(*trio.testing.lockstep_stream_pair())


async def assert_nothing_arrives(stream: trio.abc.ReceiveStream) -> None:
    received: list[bytes] = []

    async def read() -> None:
        received.append(bytes(await stream.receive_some()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert received == []


async def test_generic_two_way_stream() -> None:
    with trio.fail_after(30):
        await trio.testing.check_two_way_stream(memory_pair, lockstep_pair)


async def test_lazy_upgrade_waits_for_first_send() -> None:
    """With early data the request goes out only on send_all, carrying the bytes."""
    settings = WebSocketSettings(path="/ws", max_early_data=4)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        client = await dial_websocket(
            settings, client_transport, "example.com", 8080, secure=False
        )
        await assert_nothing_arrives(server_transport)
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def client_reads() -> None:
                # Blocked until the upgrade, then sees the server's reply.
                received.append(await client.receive_some())

            nursery.start_soon(client_reads)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(client.send_all, b"earlyrest")
            server = await accept_websocket(settings, server_transport)
            assert await server.receive_some() == b"earl"
            assert await server.receive_some() == b"yrest"
            await server.send_all(b"reply")
        assert received == [b"reply"]


async def test_lazy_send_eof_still_upgrades() -> None:
    settings = WebSocketSettings(path="/ws", max_early_data=100)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        client = await dial_websocket(
            settings, client_transport, "example.com", 80, secure=False
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_eof)
            server = await accept_websocket(settings, server_transport)
        await server.send_all(b"down")
        assert await client.receive_some() == b"down"
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"more")


async def test_lazy_upgrade_refused() -> None:
    """A refused lazy upgrade fails the send with DialError; aclose still closes."""
    settings = WebSocketSettings(path="/other", max_early_data=10)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        client = await dial_websocket(
            settings, client_transport, "example.com", 80, secure=False
        )
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def server() -> None:
                try:
                    await accept_websocket(SETTINGS, server_transport)
                except RemoteProtocolError as exc:
                    failures.append(exc)

            nursery.start_soon(server)
            with pytest.raises(DialError, match="refused: HTTP 404"):
                await client.send_all(b"hello")
        assert len(failures) == 1
        with pytest.raises(trio.BrokenResourceError, match="upgrade failed"):
            await client.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"again")
        await client.aclose()
        assert await server_transport.receive_some() == b""


async def test_send_eof_sends_nothing() -> None:
    """No close frame on send_eof: the other direction keeps working."""
    client, server = await memory_pair()
    with trio.fail_after(5):
        await client.send_eof()
        await server.send_all(b"still flowing")
        assert await client.receive_some() == b"still flowing"
        await assert_nothing_arrives(server)


async def test_ping_is_answered_and_text_is_data() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    peer = wsproto.WSConnection(ConnectionType.CLIENT)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                client_transport.send_all,
                peer.send(ws_events.Request(host="h", target="/ws")),
            )
            server = await accept_websocket(SETTINGS, server_transport)
        peer.receive_data(bytes(await client_transport.receive_some()))
        assert isinstance(next(peer.events()), ws_events.AcceptConnection)
        await client_transport.send_all(
            peer.send(ws_events.Ping(payload=b"p1"))
            + peer.send(ws_events.TextMessage(data="héllo"))
        )
        assert await server.receive_some() == "héllo".encode()
        peer.receive_data(bytes(await client_transport.receive_some()))
        assert list(peer.events()) == [ws_events.Pong(payload=b"p1")]
        # An error close code is a broken stream, not a clean EOF.
        await client_transport.send_all(
            peer.send(ws_events.CloseConnection(code=1011, reason="boom"))
        )
        with pytest.raises(trio.BrokenResourceError, match="1011: boom"):
            await server.receive_some()


async def test_frames_right_behind_the_request_are_kept() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    peer = wsproto.WSConnection(ConnectionType.CLIENT)
    request = peer.send(ws_events.Request(host="h", target="/ws"))
    # Frames may only be built once the handshake is accepted, so build them
    # with a second connection that already skipped it.
    framer = wsproto.connection.Connection(ConnectionType.CLIENT)
    frame = framer.send(ws_events.BytesMessage(data=b"eager"))
    with trio.fail_after(5):
        await client_transport.send_all(request + frame)
        server = await accept_websocket(SETTINGS, server_transport)
        assert await server.receive_some() == b"eager"


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        pytest.param(
            b"\x16\x03\x01\x02\x00\x01\x00\x01", "TLS ClientHello", id="tls-hello"
        ),
        pytest.param(b"\x00\x01\x02\x03\x04", "first bytes 00 01 02 03", id="binary"),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n",
            "Connection: Upgrade",
            id="plain-get",
        ),
    ],
)
async def test_not_an_upgrade(request_bytes: bytes, message: str) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await client_transport.send_all(request_bytes)
        with pytest.raises(RemoteProtocolError, match=message):
            await accept_websocket(SETTINGS, server_transport)


async def test_oversized_request_head() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await client_transport.send_all(b"GET /ws HTTP/1.1\r\nX: " + b"a" * 20_000)
        with pytest.raises(RemoteProtocolError, match="longer than 16384"):
            await accept_websocket(SETTINGS, server_transport)


async def test_upgrade_refused_by_eof() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await server_transport.aclose()
        with pytest.raises(DialError, match=r"example\.com:80/ws"):
            await dial_websocket(
                SETTINGS, client_transport, "example.com", 80, secure=False
            )


def test_early_data_codec() -> None:
    assert encode_early_data(b"\xfb\xff") == "-_8"
    assert decode_early_data("-_8") == b"\xfb\xff"
    # Standard alphabet and padding are tolerated, like Xray.
    assert decode_early_data("+/8=") == b"\xfb\xff"
    assert decode_early_data("not base64!") is None


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        ("example.com", 80, False, "example.com"),
        ("example.com", 443, True, "example.com"),
        ("example.com", 443, False, "example.com:443"),
        ("::1", 8080, False, "[::1]:8080"),
    ],
)
def test_default_host_header(host: str, port: int, secure: bool, expected: str) -> None:
    assert default_host_header(host, port, secure=secure) == expected


UPGRADE_HEADERS = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
HOSTILE = st.binary(max_size=40) | st.sampled_from(
    [b"xn--zz", b"xn--a.xn--", b"\xff\xfe", b"a" * 70, b"====", b"a,,b"]
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(target=HOSTILE, host=HOSTILE, protocol=HOSTILE, forwarded=HOSTILE)
def test_hostile_upgrade_requests_raise_only_typed_errors(
    target: bytes, host: bytes, protocol: bytes, forwarded: bytes
) -> None:
    """Whatever the request head holds, the server accepts or raises
    RemoteProtocolError; nothing else escapes (the runtime logs only those)."""
    request = (
        b"GET /ws" + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
        b"X-Forwarded-For: " + forwarded + b"\r\n" + UPGRADE_HEADERS + b"\r\n"
    )

    async def run() -> None:
        client_transport, server_transport = trio.testing.memory_stream_pair()
        await client_transport.send_all(request)
        with trio.fail_after(5):
            try:
                stream = await accept_websocket(SETTINGS, server_transport)
            except RemoteProtocolError:
                return
            await stream.aclose()

    trio.run(run)
