"""Sniffers: the names real clients' first bytes carry, and when to stop reading."""

from __future__ import annotations

import functools
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrio.protocol.sniff import (
    MORE,
    Sniffed,
    overrides,
    sniff,
    sniff_bittorrent,
    sniff_http,
    sniff_tls,
)


@functools.cache
def client_hello(server_name: str | None, *, tls12: bool = False) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL)."""
    context = ssl.create_default_context()
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def hand_built_hello(names: list[tuple[int, bytes]], *, before: bytes = b"") -> bytes:
    """A ClientHello whose server-name list is ``names`` (type, name), after
    the extensions in ``before``."""
    entries = b"".join(
        bytes((kind,)) + len(name).to_bytes(2) + name for kind, name in names
    )
    server_name = len(entries).to_bytes(2) + entries
    extensions = before + b"\x00\x00" + len(server_name).to_bytes(2) + server_name
    body = (
        b"\x03\x03"
        + bytes(32)  # random
        + b"\x20"
        + bytes(32)  # session ID
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # no compression
        + len(extensions).to_bytes(2)
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3) + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2) + handshake


@pytest.mark.parametrize("tls12", [False, True])
def test_openssl_client_hello_gives_its_server_name(tls12: bool) -> None:
    hello = client_hello("Www.Example.COM", tls12=tls12)
    assert sniff(hello) == Sniffed("tls", "www.example.com")
    # Bytes behind the record (a second record, early data) change nothing.
    assert sniff(hello + b"\x17\x03\x03\x00\x05hello") == Sniffed(
        "tls", "www.example.com"
    )


def test_every_prefix_of_a_client_hello_asks_for_more() -> None:
    hello = client_hello("example.com")
    for size in range(len(hello)):
        assert sniff_tls(hello[:size]) == MORE, size


def test_a_client_hello_without_a_name_is_tls_with_nothing_to_give() -> None:
    assert sniff_tls(client_hello(None)) is None


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([(0, b"a.example")], "a.example"),
        ([(1, b"other-type"), (0, b"b.example")], "b.example"),
        ([(0, b"trailing.dot.")], None),  # RFC 6066; v2ray refuses it too
        ([(0, "bücher.example".encode())], None),  # not a VMess domain
        ([(0, b"a b")], None),
        ([(1, b"other-type")], None),
    ],
)
def test_server_name_list_entries(
    names: list[tuple[int, bytes]], expected: str | None
) -> None:
    hello = hand_built_hello(names, before=b"\x00\x17\x00\x00")  # ems, empty
    assert sniff_tls(hello) == (Sniffed("tls", expected) if expected else None)


@pytest.mark.parametrize(
    "data",
    [
        b"\x17\x03\x03\x00\x10",  # application data, not a handshake
        b"\x16\x02\x00\x00\x10",  # SSL 2 version byte
        b"\x16\x03\x01\xff\xff",  # a record longer than TLS allows
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    ],
)
def test_what_is_not_a_client_hello(data: bytes) -> None:
    assert sniff_tls(data) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n", "example.com"),
        (
            b"get /x HTTP/1.0\nUser-Agent: a\nHOST:  Example.com:8080 \n\n",
            "example.com",
        ),
        (
            b"POST http://h.example/p HTTP/1.1\r\nHost: h.example\r\n\r\nbody",
            "h.example",
        ),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1:81\r\n", "192.0.2.1"),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n", "[2001:db8::1]"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n", "a.example"),
    ],
)
def test_http_requests_give_their_host(data: bytes, expected: str) -> None:
    assert sniff(data) == Sniffed("http1", expected)


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"G", MORE),
        (b"OPTIO", MORE),
        (b"GET / HTTP/1.1", MORE),  # the request line is not complete
        (b"GET / HTTP/1.1\r\nUser-Agent: a\r\nHo", MORE),  # nor the Host line
        (b"GET / HTTP/1.1\r\n\r\n", None),  # the head ended without a Host
        (b"GET / HTTP/1.1\r\nHost: bad host\r\n", None),
        (b"GET foo\r\n", None),  # Redis's inline GET, not HTTP
        (b"SSH-2.0-OpenSSH_9.6\r\n", None),
        (b"EHLO mail.example\r\n", None),
    ],
)
def test_http_sniffer_stops_as_soon_as_it_can(data: bytes, verdict: object) -> None:
    assert sniff_http(data) == verdict


def test_bittorrent_handshake_has_a_protocol_and_no_name() -> None:
    handshake = (
        b"\x13BitTorrent protocol" + bytes(8) + bytes(20) + b"-qB4650-" + bytes(12)
    )
    assert sniff(handshake) == Sniffed("bittorrent")
    assert sniff_bittorrent(handshake[:10]) == MORE
    assert sniff_bittorrent(b"\x13BitTorrent protoxol") is None


@given(st.binary(max_size=600))
def test_any_bytes_get_a_verdict_and_never_an_exception(data: bytes) -> None:
    verdict = sniff(data)
    assert verdict == MORE or verdict is None or isinstance(verdict, Sniffed)


@given(st.binary(min_size=1, max_size=300), st.integers(0, 516))
def test_a_damaged_client_hello_never_raises(noise: bytes, at: int) -> None:
    hello = bytearray(client_hello("example.com"))
    hello[at : at + len(noise)] = noise
    verdict = sniff_tls(bytes(hello))
    assert verdict in (MORE, None) or isinstance(verdict, Sniffed)


@pytest.mark.parametrize(
    ("protocol", "dest_override", "expected"),
    [
        ("http1", ("http",), True),
        ("tls", ("http", "tls"), True),
        ("tls", ("http",), False),
        ("bittorrent", ("http", "tls"), False),
        ("tls", (), False),
    ],
)
def test_dest_override_compares_like_v2ray(
    protocol: str, dest_override: tuple[str, ...], expected: bool
) -> None:
    assert overrides(protocol, dest_override) is expected
