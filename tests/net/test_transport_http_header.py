"""The "http" TCP header: its heads byte for byte, its request check, and
what a client and a prober get over real loopback sockets."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.test_transport import echo, exchange, start_server
from vtrio.config.model import (
    HttpHeaderSettings,
    HttpRequestHead,
    HttpResponseHead,
    StreamSettings,
)
from vtrio.errors import RemoteProtocolError
from vtrio.net.transport import dial
from vtrio.net.transport.http_header import (
    MAX_HEAD,
    request_head,
    request_target,
    response_head,
    target_path,
)

TIMEOUT = 10
# 2026-12-01 00:00:00 UTC
NOW = 1_796_083_200.0
HEADER = HttpHeaderSettings(
    HttpRequestHead(paths=("/obfs", "/a"), headers=(("Host", ("cdn.example",)),)),
    HttpResponseHead(headers=(("Content-Type", ("video/mp4",)),)),
)
SETTINGS = StreamSettings(http_header=HEADER)


def first(choices: object) -> str:
    return next(iter(choices), "")  # type: ignore[call-overload]


def test_default_request_head_is_v2rays() -> None:
    head = request_head(HttpRequestHead(), pick=first)
    assert head == (
        b"GET / HTTP/1.1\r\n"
        b"Host: www.baidu.com\r\n"
        b"User-Agent: Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36"
        b" (KHTML, like Gecko) Chrome/53.0.2785.143 Safari/537.36\r\n"
        b"Accept-Encoding: gzip, deflate\r\n"
        b"Connection: keep-alive\r\n"
        b"Pragma: no-cache\r\n\r\n"
    )


def test_default_response_head_adds_a_date() -> None:
    head = response_head(HttpResponseHead(), NOW, pick=first)
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\n"
        b"Pragma: no-cache\r\n"
        b"Cache-Control: private\r\n"
        b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
    )
    dated = HttpResponseHead(headers=(("date", ("yesterday",)),))
    assert response_head(dated, NOW).count(b"ate: ") == 1


def test_choices_are_drawn_per_head() -> None:
    heads = {request_head(HEADER.request) for _ in range(200)}
    assert {h.split(b" ")[1] for h in heads} == {b"/obfs", b"/a"}


TOKEN = st.text("abcXYZ-_.!09", min_size=1, max_size=8)
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@given(
    method=TOKEN,
    paths=st.lists(st.from_regex(r"/[a-z0-9/._%-]{0,12}", fullmatch=True), min_size=1),
    headers=st.lists(st.tuples(TOKEN, st.lists(VALUE, max_size=3)), max_size=5),
    cut=st.integers(min_value=0),
)
def test_every_prefix_of_a_request_head_passes_and_the_whole_gives_its_path(
    method: str, paths: list[str], headers: list[tuple[str, list[str]]], cut: int
) -> None:
    request = HttpRequestHead(
        method=method,
        paths=tuple(paths),
        headers=tuple((name, tuple(values)) for name, values in headers),
    )
    head = request_head(request)
    # A server checks lines as they come: no prefix of a good head is refused.
    request_target(head[: cut % (len(head) + 1)])
    assert request_target(head) in paths


@pytest.mark.parametrize(
    "head",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
        b"GET /\n",
        b"GET / HTTP/1.1 extra\r\n",
        b"GET / FTP/1.1\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"GET relative HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\n folded-first: x\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n",
        b"GET / HTTP/1.1\r\nName : spaced\r\n",
    ],
)
def test_malformed_request_lines_are_refused(head: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        request_target(head)


def test_target_path_is_gos_url_path() -> None:
    assert target_path("/obfs?x=1") == "/obfs"
    assert target_path("/%6Fbfs") == "/obfs"
    assert target_path("http://host:80/obfs") == "/obfs"


async def test_round_trip_and_the_heads_on_the_wire() -> None:
    """vtrio to vtrio; a raw socket then shows what each side puts first."""
    payload = random.Random(1).randbytes(1 << 20)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, SETTINGS, echo, errors)
            async with await dial(SETTINGS, "127.0.0.1", port) as stream:
                echoed = await exchange(stream, payload)
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            async with raw:
                await raw.send_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nping")
                received = b""
                while not received.endswith(b"ping"):
                    received += await raw.receive_some()
            nursery.cancel_scope.cancel()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert errors == []
    head, _, body = received.partition(b"\r\n\r\n")
    assert body == b"ping"
    assert re.fullmatch(
        rb"HTTP/1\.1 200 OK\r\nContent-Type: video/mp4\r\nDate: \w{3}, .* GMT", head
    )


async def probe(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """What a server sends back to ``data`` until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
    return received


def undated(response: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", response)


REFUSED_400 = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nCache-Control: private\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REFUSED_404 = REFUSED_400.replace(b"400 Bad Request", b"404 Not Found")


@pytest.mark.parametrize(
    ("data", "expected", "reason"),
    [
        (b"GET /other HTTP/1.1\r\n\r\n", REFUSED_404, "not served here"),
        (b"\x05\x01\x00\x03\x00\n", REFUSED_400, "not a HTTP request"),
        (b"GET /obfs HTTP/1.1\r\nbad line\r\n", REFUSED_400, "malformed HTTP header"),
        (b"GET /obfs HTTP/1.1\r\nHost: x", REFUSED_400, "closed during"),
        (
            b"GET /obfs HTTP/1.1\r\nX: " + b"a" * MAX_HEAD,
            REFUSED_400,
            f"over {MAX_HEAD} bytes",
        ),
    ],
)
async def test_a_server_refuses_as_v2ray_does(
    data: bytes, expected: bytes, reason: str
) -> None:
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, SETTINGS, echo, errors)
            received = await probe(port, data)
            nursery.cancel_scope.cancel()
    assert undated(received) == expected
    assert b"\r\nDate: " in received
    assert [reason in str(error) for error in errors] == [True], errors


async def test_a_client_names_a_refusal() -> None:
    """A server serving other paths answers 404: the client says so."""
    errors: list[BaseException] = []
    elsewhere = dataclasses.replace(
        HEADER, request=dataclasses.replace(HEADER.request, paths=("/elsewhere",))
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, SETTINGS, echo, errors)
            stream = await dial(
                StreamSettings(http_header=elsewhere), "127.0.0.1", port
            )
            async with stream:
                await stream.send_all(b"hello")
                with pytest.raises(RemoteProtocolError, match=r"404 Not Found.*paths"):
                    await stream.receive_some()
            nursery.cancel_scope.cancel()


async def test_a_configured_error_status_is_only_a_disguise() -> None:
    """Any other status (here a 404 with a body length) carries data."""
    disguised = dataclasses.replace(
        HEADER,
        response=HttpResponseHead(
            status="404",
            reason="Not Found",
            headers=(("Content-Length", ("1024",)),),
        ),
    )
    settings = StreamSettings(http_header=disguised)
    errors: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, settings, echo, errors)
            async with await dial(settings, "127.0.0.1", port) as stream:
                echoed = await exchange(stream, b"x" * 5000)
            nursery.cancel_scope.cancel()
    assert echoed == b"x" * 5000
