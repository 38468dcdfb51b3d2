"""Transports over real loopback sockets: tcp, tls, ws and ws+tls.

Each test binds 127.0.0.1 port 0 through ``open_listeners``, runs the server side
with ``accept_stream`` and the client side with ``dial``, and checks bytes,
checksums and the typed errors a misconfigured peer gets.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.support.certs import make_pki
from vtrio.config.model import (
    Certificate,
    StreamSettings,
    TLSSettings,
    WebSocketSettings,
)
from vtrio.errors import ConfigError, DialError, RemoteProtocolError
from vtrio.net.transport import accept_stream, dial, open_listeners
from vtrio.net.transport.tls import TLSStream, chain_hash, client_context
from vtrio.net.transport.websocket import (
    WebSocketStream,
    accept_websocket,
    encode_early_data,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from vtrio.net.transport.tcp import TCPStream

TIMEOUT = 10
PAYLOAD_SIZE = 1 << 20


def server_tls() -> TLSSettings:
    pki = make_pki()
    certificate = Certificate(certificate_pem=pki.cert_pem, key_pem=pki.key_pem)
    return TLSSettings(certificates=(certificate,))


def client_tls(**changes: Any) -> TLSSettings:
    trusted = Certificate(certificate_pem=make_pki().ca_pem, usage="verify")
    settings = TLSSettings(
        server_name="vtrio.test", certificates=(trusted,), disable_system_root=True
    )
    return replace(settings, **changes)


def leaf_pin() -> bytes:
    """The chain hash of what the test server sends: its leaf alone."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(make_pki().cert_pem)).digest()


def stream_settings(
    network: Any, security: Any, tls: TLSSettings, path: str = "/ws", **ws: Any
) -> StreamSettings:
    return StreamSettings(
        network=network, security=security, tls=tls, ws=WebSocketSettings(path, **ws)
    )


LAYERS = [
    pytest.param("tcp", "none", id="tcp"),
    pytest.param("tcp", "tls", id="tls"),
    pytest.param("ws", "none", id="ws"),
    pytest.param("ws", "tls", id="ws+tls"),
    pytest.param("httpupgrade", "none", id="httpupgrade"),
    pytest.param("httpupgrade", "tls", id="httpupgrade+tls"),
]


async def start_server(
    nursery: trio.Nursery,
    settings: StreamSettings,
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    errors: list[BaseException],
) -> int:
    """Serve one connection at a time with ``handler``; record handshake errors."""
    listeners = await open_listeners(settings, "127.0.0.1", 0)

    async def serve_one(tcp: TCPStream) -> None:
        try:
            stream = await accept_stream(settings, tcp)
        except (RemoteProtocolError, trio.BrokenResourceError) as exc:
            errors.append(exc)
            await tcp.aclose()
            return
        async with stream:
            await handler(stream)

    await nursery.start(trio.serve_listeners, serve_one, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def exchange(stream: trio.abc.Stream, payload: bytes) -> bytes:
    """Send ``payload`` in uneven writes while reading the echo back."""
    received = bytearray()

    async def sender() -> None:
        rng = random.Random(7)
        offset = 0
        while offset < len(payload):
            size = rng.randrange(1, 70_000)
            await stream.send_all(payload[offset : offset + size])
            offset += size

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while len(received) < len(payload):
            data = await stream.receive_some()
            assert data, "echo ended early"
            received += data
    return bytes(received)


@pytest.mark.parametrize(
    ("network", "security", "early"),
    [
        *(pytest.param(*layer.values, 0, id=layer.id) for layer in LAYERS),
        pytest.param("ws", "none", 2048, id="ws-early"),
        pytest.param("ws", "tls", 2048, id="ws+tls-early"),
        pytest.param("httpupgrade", "none", 2048, id="httpupgrade-early"),
        pytest.param("httpupgrade", "tls", 2048, id="httpupgrade+tls-early"),
    ],
)
async def test_round_trip(network: str, security: str, early: int) -> None:
    payload = random.Random(network + security).randbytes(PAYLOAD_SIZE)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = stream_settings(network, security, server_tls())
            port = await start_server(nursery, server, echo, errors)
            client = stream_settings(
                network, security, client_tls(), max_early_data=early
            )
            stream = await dial(client, "127.0.0.1", port)
            async with stream:
                echoed = await exchange(stream, payload)
            nursery.cancel_scope.cancel()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert errors == []


@pytest.mark.parametrize(("network", "security"), LAYERS)
async def test_close_is_seen_as_eof(network: str, security: str) -> None:
    """The server closing its side ends the client's reads with b""."""
    errors: list[BaseException] = []

    async def greet_and_close(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"bye")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = stream_settings(network, security, server_tls())
            port = await start_server(nursery, server, greet_and_close, errors)
            stream = await dial(
                stream_settings(network, security, client_tls()), "127.0.0.1", port
            )
            async with stream:
                received = b""
                while data := await stream.receive_some():
                    received += data
            nursery.cancel_scope.cancel()
    assert received == b"bye"
    assert errors == []


async def test_tls_server_from_files_and_alpn(tmp_path) -> None:
    """Certificates from files; the configured ALPN is negotiated."""
    _, cert_file, key_file = make_pki().write(tmp_path)
    certificate = Certificate(certificate_file=str(cert_file), key_file=str(key_file))
    server = stream_settings(
        "tcp", "tls", TLSSettings(certificates=(certificate,), alpn=("h2", "http/1.1"))
    )
    client = stream_settings("tcp", "tls", client_tls(alpn=("http/1.1",)))
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, server, echo, errors)
            stream = await dial(client, "127.0.0.1", port)
            async with stream:
                assert await exchange(stream, b"x" * 100) == b"x" * 100
                assert stream.ssl_stream.selected_alpn_protocol() == "http/1.1"  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_sni_defaults_to_dialled_host() -> None:
    """Without serverName the dialled address is checked (127.0.0.1 is in the SAN)."""
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("tcp", "tls", server_tls()), echo, errors
            )
            client = stream_settings("tcp", "tls", client_tls(server_name=None))
            async with await dial(client, "127.0.0.1", port) as stream:
                assert await exchange(stream, b"abc") == b"abc"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("tls", "reason"),
    [
        pytest.param(
            {"server_name": "wrong.example"}, "Hostname mismatch", id="wrong-sni"
        ),
        pytest.param(
            {"certificates": ()}, "unable to get local issuer", id="untrusted"
        ),
        pytest.param(
            {"certificates": (), "pinned_chain_sha256": (leaf_pin(),)},
            "unable to get local issuer",
            id="pinned-but-untrusted",
        ),
    ],
)
async def test_tls_verification_failures(tls: dict[str, object], reason: str) -> None:
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("ws", "tls", server_tls()), echo, errors
            )
            client = stream_settings("ws", "tls", client_tls(**tls))
            with pytest.raises(DialError) as caught:
                await dial(client, "127.0.0.1", port)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "certificate verify failed" in message
    assert reason in message
    # The server side sees the client's alert, as a typed error.
    assert len(errors) == 1
    assert isinstance(errors[0], RemoteProtocolError)
    assert "TLS handshake failed" in str(errors[0])


async def tls_echo(
    client: TLSSettings, payload: bytes, server: TLSSettings | None = None
) -> bytes:
    """``payload`` echoed by a TLS server (``server``, or one on the test
    certificate), through a client with these settings.

    Raises:
        DialError: the client refused the server.
    """
    errors: list[BaseException] = []
    refused: DialError | None = None
    echoed = b""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery,
                stream_settings("tcp", "tls", server or server_tls()),
                echo,
                errors,
            )
            settings = stream_settings("tcp", "tls", client)
            try:
                async with await dial(settings, "127.0.0.1", port) as stream:
                    echoed = await exchange(stream, payload)
            except DialError as exc:
                refused = exc
            nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused
    return echoed


async def test_allow_insecure_skips_verification() -> None:
    insecure = client_tls(
        server_name="wrong.example", certificates=(), allow_insecure=True
    )
    assert await tls_echo(insecure, b"insecure") == b"insecure"


async def test_plaintext_on_tls_port() -> None:
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("ws", "tls", server_tls()), echo, errors
            )
            # A ws client that forgot TLS.
            with pytest.raises(DialError):
                await dial(
                    stream_settings("ws", "none", client_tls()), "127.0.0.1", port
                )
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert isinstance(errors[0], RemoteProtocolError)
    assert "not speaking TLS" in str(errors[0])


async def test_tls_on_plain_ws_port() -> None:
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("ws", "none", server_tls()), echo, errors
            )
            with pytest.raises(DialError):
                await dial(
                    stream_settings("ws", "tls", client_tls()), "127.0.0.1", port
                )
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert "looks like a TLS ClientHello" in str(errors[0])


@pytest.mark.parametrize("security", ["none", "tls"])
async def test_wrong_path_gets_404(security: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vtrio.net.transport.websocket")
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("ws", security, server_tls()), echo, errors
            )
            client = stream_settings(
                "ws", security, client_tls(), path="/wrong", host="cdn.example"
            )
            with pytest.raises(DialError, match="refused: HTTP 404"):
                await dial(client, "127.0.0.1", port)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert isinstance(errors[0], RemoteProtocolError)
    assert "'/wrong'" in str(errors[0])
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert logged == ["WebSocket request for path '/wrong', Host 'cdn.example': 404"]


async def test_query_string_is_not_part_of_the_path() -> None:
    """v2ray compares URL.Path: "/ws?ed=2560" reaches the "/ws" inbound."""
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("ws", "none", server_tls()), echo, errors
            )
            client = stream_settings("ws", "none", client_tls(), path="/ws?ed=2560")
            async with await dial(client, "127.0.0.1", port) as stream:
                assert await exchange(stream, b"q") == b"q"
            nursery.cancel_scope.cancel()
    assert errors == []


class Recording(trio.abc.Stream):
    """Records what the peer sent, to look at the raw upgrade request."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = bytearray()

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("header_name", "raw_header"),
    [
        pytest.param("", b"sec-websocket-protocol", id="xray-ed"),
        pytest.param(
            "Sec-WebSocket-Protocol", b"sec-websocket-protocol", id="v2ray-swp"
        ),
        pytest.param("X-Early-Data", b"x-early-data", id="v2ray-named"),
    ],
)
async def test_early_data_travels_in_the_upgrade_request(
    header_name: str, raw_header: bytes
) -> None:
    payload = random.Random(1).randbytes(5000)
    limit = 2048
    ws = WebSocketSettings(
        path="/ws", max_early_data=limit, early_data_header_name=header_name
    )
    client = StreamSettings(network="ws", ws=ws)
    seen: dict[str, object] = {}
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await open_listeners(client, "127.0.0.1", 0)

            async def serve(tcp: TCPStream) -> None:
                recording = Recording(tcp)
                stream = await accept_websocket(ws, recording)
                seen["head"] = bytes(recording.received)
                async with stream:
                    seen["first"] = first = await stream.receive_some()
                    await stream.send_all(first)
                    await echo(stream)

            await nursery.start(trio.serve_listeners, serve, listeners)
            port = listeners[0].socket.getsockname()[1]
            stream = await dial(client, "127.0.0.1", port)
            assert isinstance(stream, WebSocketStream)
            async with stream:
                # The server sees the early bytes before any frame is sent.
                echoed = await exchange(stream, payload)
            nursery.cancel_scope.cancel()
    head = seen["head"]
    assert isinstance(head, bytes)
    request_head = head.split(b"\r\n\r\n")[0].lower()
    expected = encode_early_data(payload[:limit]).encode().lower()
    assert f"{raw_header.decode()}: ".encode() + expected in request_head
    assert b"=" not in expected
    assert seen["first"] == payload[:limit]
    assert echoed == payload


async def test_forwarded_for_and_host_header() -> None:
    ws = WebSocketSettings(
        path="/ws",
        headers=(
            ("Host", "front.example"),
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
        ),
    )
    settings = StreamSettings(network="ws", ws=ws)
    seen: list[tuple[str | None, bytes]] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await open_listeners(settings, "127.0.0.1", 0)

            async def serve(tcp: TCPStream) -> None:
                recording = Recording(tcp)
                stream = await accept_websocket(ws, recording)
                seen.append((stream.forwarded_for, bytes(recording.received)))
                await stream.aclose()

            await nursery.start(trio.serve_listeners, serve, listeners)
            port = listeners[0].socket.getsockname()[1]
            async with await dial(settings, "127.0.0.1", port) as stream:
                assert await stream.receive_some() == b""
            nursery.cancel_scope.cancel()
    [(forwarded_for, head)] = seen
    assert forwarded_for == "203.0.113.7"
    assert head.lower().count(b"\r\nhost: ") == 1
    assert b"\r\nhost: front.example\r\n" in head.lower()


async def test_dial_refused_is_dial_error() -> None:
    with trio.fail_after(TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        with pytest.raises(DialError, match=f"cannot connect to 127.0.0.1:{port}"):
            await dial(StreamSettings(), "127.0.0.1", port)


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param({"allow_insecure": True, "certificates": ()}, id="insecure"),
        pytest.param({}, id="verified-too"),
        pytest.param(
            {"allow_insecure": True, "server_name": "wrong.example"},
            id="name-unchecked",
        ),
    ],
)
async def test_a_pinned_chain_is_accepted(tls: dict[str, object]) -> None:
    """Pinned and insecure: the hash alone decides (v2ray); pinned and
    verified: both must pass."""
    pinned = client_tls(pinned_chain_sha256=(bytes(32), leaf_pin()), **tls)
    assert await tls_echo(pinned, b"pinned") == b"pinned"


async def test_a_chain_that_is_not_pinned_is_refused_with_its_hash() -> None:
    unpinned = client_tls(
        allow_insecure=True, certificates=(), pinned_chain_sha256=(bytes(32),)
    )
    with pytest.raises(DialError) as caught:
        await tls_echo(unpinned, b"never")
    expected = base64.b64encode(leaf_pin()).decode()
    assert f"chain is not pinned (its hash: {expected})" in str(caught.value)


def test_chain_hash_folds_sha256s_as_v2ray() -> None:
    first, second = b"leaf", b"issuer"
    digest = hashlib.sha256
    assert chain_hash([first]) == digest(first).digest()
    assert (
        chain_hash([first, second])
        == digest(digest(first).digest() + digest(second).digest()).digest()
    )
    assert chain_hash([]) == b""


async def test_an_xray_pin_of_the_servers_own_certificate_replaces_checks() -> None:
    """pinnedPeerCertSha256: the leaf's hash alone decides; a pin of the CA
    (which Xray would verify the chain against) is refused, not trusted."""
    pki = make_pki()
    ca_pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pki.ca_pem)).digest()
    # The server sends its CA too, so that the CA's pin can be found.
    chained = Certificate(
        certificate_pem=pki.cert_pem + pki.ca_pem, key_pem=pki.key_pem
    )
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery,
                stream_settings("tcp", "tls", TLSSettings(certificates=(chained,))),
                echo,
                errors,
            )
            untrusting = client_tls(server_name="wrong.example", certificates=())
            good = stream_settings(
                "tcp", "tls", replace(untrusting, pinned_cert_sha256=(leaf_pin(),))
            )
            async with await dial(good, "127.0.0.1", port) as stream:
                assert await exchange(stream, b"xray pin") == b"xray pin"
            messages = []
            for pins in ((ca_pin,), (bytes(32),)):
                bad = stream_settings(
                    "tcp", "tls", replace(untrusting, pinned_cert_sha256=pins)
                )
                with pytest.raises(DialError) as caught:
                    await dial(bad, "127.0.0.1", port)
                messages.append(str(caught.value))
            nursery.cancel_scope.cancel()
    assert "matches a CA of its chain" in messages[0]
    assert f"not pinned (its SHA-256: {leaf_pin().hex()})" in messages[1]


async def test_max_version_and_go_cipher_suite_names_are_applied() -> None:
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, stream_settings("tcp", "tls", server_tls()), echo, errors
            )
            suites = "TLS_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
            client = stream_settings(
                "tcp", "tls", client_tls(max_version="1.2", cipher_suites=suites)
            )
            async with await dial(client, "127.0.0.1", port) as stream:
                assert isinstance(stream, TLSStream)
                assert stream.ssl_stream.version() == "TLSv1.2"
                cipher = stream.ssl_stream.cipher()
                assert cipher is not None
                assert cipher[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"cipher_suites": "TLS_NULL_WITH_NOTHING"}, "unknown cipher suite"),
        ({"cipher_suites": "TLS_AES_128_GCM_SHA256"}, "no TLS 1.2 cipher suite"),
        ({"max_version": "1.5"}, "unknown TLS version '1.5'"),
    ],
)
def test_bad_versions_and_suites_are_config_errors(
    changes: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        client_context(client_tls(**changes))
