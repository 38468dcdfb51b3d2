"""What the two upgrade transports (WebSocket, HTTPUpgrade) share of HTTP/1.1.

Both open with one request head and one answer head and then carry other
bytes on the same stream, so a head is cut off at its blank line here and the
bytes behind it are handed on (a client may send its first payload right
behind the request, a server its first bytes right behind the answer).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from vtrio.errors import RemoteProtocolError

if TYPE_CHECKING:
    import trio

# Bound on a request or answer head; early data of 2560 bytes (Xray's usual
# ?ed=2560) takes about 3.4 KiB of a WebSocket request. h11 uses the same default.
MAX_HEAD = 16 * 1024
RECEIVE_SIZE = 64 * 1024


async def read_head(
    transport: trio.abc.Stream, what: str, start: bytes = b"GET "
) -> tuple[bytes, bytes]:
    """Read up to the blank line ending a head; return (head, rest).

    Args:
        transport: the stream the head arrives on.
        what: names the head in errors ("WebSocket upgrade request").
        start: how a head of this kind begins; other first bytes are refused
            as soon as they are in.

    Raises:
        RemoteProtocolError: not such a head, longer than ``MAX_HEAD``, or the
            peer closed before its end.
    """
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
        if len(buffer) >= len(start) and not buffer.startswith(start):
            raise RemoteProtocolError(not_http_message(what, bytes(buffer[:8])))
        if len(buffer) > MAX_HEAD:
            raise RemoteProtocolError(f"{what} longer than {MAX_HEAD} bytes")
        data = await transport.receive_some(RECEIVE_SIZE)
        if not data:
            raise RemoteProtocolError(f"connection closed during the {what}")
        buffer += data


def not_http_message(what: str, first: bytes) -> str:
    message = f"not a {what} (first bytes {first.hex(' ')})"
    if first.startswith(b"\x16\x03"):
        message += "; it looks like a TLS ClientHello: enable TLS on this inbound"
    return message


def default_host_header(host: str, port: int, *, secure: bool) -> str:
    """``host[:port]`` as an HTTP client writes it (the port only when not default)."""
    literal = f"[{host}]" if ":" in host else host
    return literal if port == (443 if secure else 80) else f"{literal}:{port}"


def normalized_path(path: str) -> str:
    """The path with its leading slash, as v2ray's ``GetNormalizedPath``."""
    return path if path.startswith("/") else f"/{path}"


def path_matches(target: str, configured: str) -> bool:
    """Whether a request target is for the configured path: Go compares the
    decoded ``URL.Path``, without the query, as both peers' servers do."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
    return path == urllib.parse.urlsplit(normalized_path(configured)).path


def first_forwarded(value: str | None) -> str | None:
    """The client address an ``X-Forwarded-For`` value starts with."""
    if value is None:
        return None
    return value.split(",")[0].strip() or None
