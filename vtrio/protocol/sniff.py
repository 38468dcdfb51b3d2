"""What a tunnel's first bytes say it carries: HTTP's Host, TLS's SNI, BitTorrent.

Theory of operation: a client that dialled an IP (its own resolver, a
hard-coded address) still names the site in its first bytes, and v2ray's
"sniffing" reads them so that routing and the outbound can use that name.
Each sniffer looks at the bytes received so far and answers with a result,
:data:`MORE` (this could be mine, send more) or None (certainly not mine), so
a caller stops reading as soon as every sniffer has decided. As in v2ray, an
HTTP/1 request gives protocol ``http1`` and its Host, a TLS ClientHello gives
``tls`` and its server name, a BitTorrent handshake ``bittorrent`` and no
name. Names are returned as given (lower-cased, an HTTP port removed); only
ones a VMess address can carry are returned, so an override cannot fail later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

MORE: Final = "more"

# The methods v2ray's HTTP sniffer knows (Go's net/http constants).
HTTP_METHODS = b"GET POST HEAD PUT DELETE OPTIONS CONNECT PATCH TRACE".split()
_REQUEST_LINE = re.compile(rb"[A-Za-z]+ [^ \r\n]+ HTTP/\d\.\d\r?\n")
_HOST_NAME = re.compile(r"[0-9a-z._-]+|\[[0-9a-f:.]+\]")
BITTORRENT_HANDSHAKE = b"\x13BitTorrent protocol"
TLS_HANDSHAKE_RECORD = 0x16
TLS_CLIENT_HELLO = 1
TLS_MAX_RECORD = 16384 + 2048
EXTENSION_SERVER_NAME = 0
HOST_NAME_TYPE = 0


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A recognised first payload."""

    protocol: str
    domain: str = ""


Verdict = Sniffed | Literal["more"] | None
Sniffer = Callable[[bytes], Verdict]


def _host_name(text: str) -> str:
    """``text`` if a VMess address can carry it as a domain or IP, else ""."""
    name = text.strip().lower()
    return name if _HOST_NAME.fullmatch(name) and len(name) <= 255 else ""


def sniff_http(data: bytes) -> Verdict:
    """An HTTP/1 request with a Host header."""
    start = data[:8].upper()
    if not any(
        start.startswith(method) or method.startswith(start) for method in HTTP_METHODS
    ):
        return None
    end_of_line = data.find(b"\n")
    if end_of_line < 0:
        return MORE if len(data) < 8192 else None
    if not _REQUEST_LINE.fullmatch(data, 0, end_of_line + 1):
        return None
    for line in data[end_of_line + 1 :].split(b"\n")[:-1]:  # whole lines only
        if line in (b"", b"\r"):
            return None  # the head ended without a Host
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            if host.startswith("["):  # an IPv6 literal, perhaps with a port
                host = host[: host.find("]") + 1]
            elif host.count(":") == 1:
                host = host.partition(":")[0]
            domain = _host_name(host)
            return Sniffed("http1", domain) if domain else None
    return MORE


def sniff_tls(data: bytes) -> Verdict:
    """A TLS ClientHello with a server name, read from its first record."""
    if len(data) < 5:
        return MORE if data[:1] in (b"", bytes((TLS_HANDSHAKE_RECORD,))) else None
    if data[0] != TLS_HANDSHAKE_RECORD or data[1] != 3:
        return None
    length = int.from_bytes(data[3:5])
    if length > TLS_MAX_RECORD:
        return None
    if len(data) < 5 + length:
        return MORE
    return client_hello_name(memoryview(data)[5 : 5 + length])


def client_hello_name(body: memoryview) -> Sniffed | None:
    """The server name of a ClientHello (handshake header onwards), if any."""
    if len(body) < 39 or body[0] != TLS_CLIENT_HELLO:
        return None
    # type 1, length 3, version 2, random 32: the session ID follows.
    offset = 38
    for length_size in (1, 2, 1):  # session ID, cipher suites, compression
        if offset + length_size > len(body):
            return None
        offset += length_size + int.from_bytes(body[offset : offset + length_size])
    if offset + 2 > len(body):
        return None  # no extensions at all
    end = offset + 2 + int.from_bytes(body[offset : offset + 2])
    offset += 2
    if end > len(body):
        return None
    while offset + 4 <= end:
        kind = int.from_bytes(body[offset : offset + 2])
        size = int.from_bytes(body[offset + 2 : offset + 4])
        offset += 4
        if offset + size > end:
            return None
        if kind == EXTENSION_SERVER_NAME:
            return _server_name(body[offset : offset + size])
        offset += size
    return None


def _server_name(extension: memoryview) -> Sniffed | None:
    offset = 2  # the list's length
    while offset + 3 <= len(extension):
        kind = extension[offset]
        size = int.from_bytes(extension[offset + 1 : offset + 3])
        name = bytes(extension[offset + 3 : offset + 3 + size])
        if kind == HOST_NAME_TYPE and len(name) == size:
            # RFC 6066: no trailing dot, no IP literal; v2ray refuses both too.
            domain = _host_name(name.decode("ascii", "replace"))
            if not domain or domain.endswith(".") or domain.startswith("["):
                return None
            return Sniffed("tls", domain)
        offset += 3 + size
    return None


def sniff_bittorrent(data: bytes) -> Verdict:
    """The BitTorrent peer handshake."""
    size = min(len(data), len(BITTORRENT_HANDSHAKE))
    if data[:size] != BITTORRENT_HANDSHAKE[:size]:
        return None
    return Sniffed("bittorrent") if size == len(BITTORRENT_HANDSHAKE) else MORE


TCP_SNIFFERS: tuple[Sniffer, ...] = (sniff_http, sniff_tls, sniff_bittorrent)


def sniff(data: bytes, sniffers: Sequence[Sniffer] = TCP_SNIFFERS) -> Verdict:
    """The first sniffer's result; MORE while any sniffer still waits for more."""
    waiting = False
    for sniffer in sniffers:
        verdict = sniffer(data)
        if verdict == MORE:
            waiting = True
        elif verdict is not None:
            return verdict
    return MORE if waiting else None


def overrides(protocol: str, dest_override: Sequence[str]) -> bool:
    """Whether ``destOverride`` asks for this protocol's name (v2ray compares
    prefixes and suffixes, so ``http`` covers ``http1``)."""
    return any(protocol.startswith(p) or protocol.endswith(p) for p in dest_override)
