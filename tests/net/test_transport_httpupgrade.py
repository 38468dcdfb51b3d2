"""HTTPUpgrade over in-memory streams: the exact heads each side writes, what
the server refuses (all alike), bytes behind a head, Xray's ``?ed=N``, and
half-close over TCP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

from vtrio.config.model import StreamSettings, WebSocketSettings
from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.transport import accept_stream, dial, open_listeners
from vtrio.net.transport.httpupgrade import (
    HTTPUpgradeStream,
    accept_httpupgrade,
    dial_httpupgrade,
)

if TYPE_CHECKING:
    from vtrio.net.transport.tcp import TCPStream

SETTINGS = WebSocketSettings(path="/up")
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n"
)
REFUSAL = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def read_until_blank_line(stream: trio.abc.ReceiveStream) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some()
        assert data, "closed before the end of the head"
        received += data
    return received


async def test_client_request_is_what_both_peers_accept() -> None:
    """Host, then configured headers, then the upgrade pair; no
    Sec-WebSocket-Key, which sing-box's server refuses."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    settings = WebSocketSettings(path="up", headers=(("User-Agent", "vtrio"),))
    result: list[HTTPUpgradeStream] = []

    async def client() -> None:
        result.append(
            await dial_httpupgrade(
                settings, client_transport, "example.com", 8080, secure=False
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        request = await read_until_blank_line(server_transport)
        await server_transport.send_all(SWITCHING + b"first")
    assert request == (
        b"GET /up HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: vtrio\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    # Bytes behind the answer are the stream's first.
    assert await result[0].receive_some() == b"first"


async def pair(
    settings: WebSocketSettings = SETTINGS,
) -> tuple[HTTPUpgradeStream, HTTPUpgradeStream]:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    streams: dict[str, HTTPUpgradeStream] = {}

    async def server() -> None:
        streams["server"] = await accept_httpupgrade(settings, server_transport)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        streams["client"] = await dial_httpupgrade(
            settings, client_transport, "example.com", 80, secure=False
        )
    return streams["client"], streams["server"]


async def test_bytes_flow_both_ways_after_the_upgrade() -> None:
    client, server = await pair()
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await server.send_all(b"pong")
    assert await client.receive_some() == b"pong"
    assert server.path == "/up"


async def test_payload_behind_the_request_is_kept() -> None:
    """A client that does not wait for the answer (Xray ?ed=N) sends its
    first payload in the same write as the request."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    await client_transport.send_all(
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n\r\n"
        b"vmess-header"
    )
    stream = await accept_httpupgrade(SETTINGS, server_transport)
    assert await read_until_blank_line(client_transport) == SWITCHING
    assert stream.buffered == len(b"vmess-header")
    assert stream.receive_nowait(100) == b"vmess-header"
    assert stream.forwarded_for == "203.0.113.7"


async def test_websocket_key_is_answered_as_xray_does() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    await client_transport.send_all(
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    await accept_httpupgrade(SETTINGS, server_transport)
    answer = await read_until_blank_line(client_transport)
    # RFC 6455's example key and accept token.
    assert answer == SWITCHING[:-2] + (
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("request_head", "reason"),
    [
        (b"GET /other HTTP/1.1\r\nHost: a\r\n", "path '/other'"),
        (b"GET /up HTTP/1.1\r\nHost: b.example\r\n", "Host 'b.example'"),
        (b"GET /up HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n", "upgrade"),
    ],
)
async def test_refusals_look_alike(request_head: bytes, reason: str) -> None:
    """Wrong path, wrong Host, not an upgrade: the same 404, so a prober
    cannot tell which check failed."""
    settings = WebSocketSettings(path="/up", host="a.example")
    client_transport, server_transport = trio.testing.memory_stream_pair()
    upgrade = (
        b""
        if b"Connection" in request_head
        else (b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    )
    await client_transport.send_all(request_head + upgrade + b"\r\n")
    with pytest.raises(RemoteProtocolError, match=reason):
        await accept_httpupgrade(settings, server_transport)
    assert await read_until_blank_line(client_transport) == REFUSAL


async def test_host_is_compared_without_port_and_case() -> None:
    settings = WebSocketSettings(path="/up", host="CDN.example")
    client_transport, server_transport = trio.testing.memory_stream_pair()
    await client_transport.send_all(
        b"GET /up?x=1 HTTP/1.1\r\nHost: cdn.example:8443\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    stream = await accept_httpupgrade(settings, server_transport)
    assert stream.path == "/up?x=1"


async def test_a_refused_upgrade_is_a_dial_error() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    await server_transport.send_all(REFUSAL)
    with pytest.raises(DialError, match="refused: HTTP 404 Not Found"):
        await dial_httpupgrade(
            SETTINGS, client_transport, "example.com", 80, secure=False
        )


async def test_an_answer_that_is_not_http_is_a_dial_error() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    await server_transport.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01")
    with pytest.raises(DialError, match="not a HTTPUpgrade answer"):
        await dial_httpupgrade(
            SETTINGS, client_transport, "example.com", 80, secure=False
        )


async def test_early_data_setting_sends_without_waiting_for_the_answer() -> None:
    """?ed=N: dial returns before any answer; the first receive reads it,
    and a refusal then breaks the stream."""
    settings = WebSocketSettings(path="/up", max_early_data=2048)
    for answer, expected in ((SWITCHING + b"data", b"data"), (REFUSAL, None)):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        stream = await dial_httpupgrade(
            settings, client_transport, "example.com", 80, secure=False
        )
        assert stream.receive_nowait(10) is None  # the answer is not data
        await stream.send_all(b"vmess")
        assert (await read_until_blank_line(server_transport)).endswith(
            b"\r\n\r\nvmess"
        )
        await server_transport.send_all(answer)
        if expected is None:
            with pytest.raises(trio.BrokenResourceError, match="HTTP 404"):
                await stream.receive_some()
        else:
            assert await stream.receive_some() == expected


async def test_half_close_over_tcp() -> None:
    """Unlike WebSocket, the bare stream half-closes: the client's EOF
    reaches the server, whose answer still comes back."""
    settings = StreamSettings(network="httpupgrade", ws=SETTINGS)
    listeners = await open_listeners(settings, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]

    async def serve(tcp: TCPStream) -> None:
        stream = await accept_stream(settings, tcp)
        received = b""
        while data := await stream.receive_some():
            received += data
        await stream.send_all(b"got " + received)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve, listeners)
            stream = await dial(settings, "127.0.0.1", port)
            await stream.send_all(b"all of it")
            await stream.send_eof()
            answer = b""
            while data := await stream.receive_some():
                answer += data
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert answer == b"got all of it"


HOSTILE = st.binary(max_size=40) | st.sampled_from(
    [b"\xff\xfe", b"a" * 70, b"[::1", b"a:b:c", b"upgrade,,", b" "]
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    target=HOSTILE, host=HOSTILE, connection=HOSTILE, key=HOSTILE, forwarded=HOSTILE
)
def test_hostile_requests_raise_only_typed_errors(
    target: bytes, host: bytes, connection: bytes, key: bytes, forwarded: bytes
) -> None:
    """Whatever the head holds, the server accepts or raises
    RemoteProtocolError; nothing else escapes."""
    request = (
        b"GET /up" + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Connection: " + connection + b"\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n"
        b"X-Forwarded-For: " + forwarded + b"\r\n\r\n"
    )
    settings = WebSocketSettings(path="/up", host="a.example")

    async def run() -> None:
        client_transport, server_transport = trio.testing.memory_stream_pair()
        await client_transport.send_all(request)
        with trio.fail_after(5):
            try:
                stream = await accept_httpupgrade(settings, server_transport)
            except RemoteProtocolError:
                return
            await stream.aclose()

    trio.run(run)
