"""The HTTP proxy inbound: CONNECT tunnels and plain absolute-URI forwarding.

Theory of operation: the request head is read with a size limit. CONNECT is
answered with ``200 Connection established`` once the outbound is connected,
then the stream is relayed as is. A plain request (``GET http://host/path``)
is rewritten to origin form, its ``Proxy-*`` headers dropped, and sent to the
host with ``Connection: close``; the rest of the connection is relayed, so a
request body follows unchanged. Basic authentication answers 407 when wrong.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from vtrio.errors import RemoteProtocolError
from vtrio.net.outbound import Destination
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.tunnel import run_tunnel
from vtrio.protocol.address import parse_address, split_host_port

if TYPE_CHECKING:
    from vtrio.config.model import HttpInboundSettings, Inbound
    from vtrio.net.context import ServerContext

MAX_HEAD = 16384


def _response(status: str, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\n\r\n".encode()


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    try:
        return split_host_port(authority, default_port)
    except ValueError as exc:
        raise RemoteProtocolError(f"bad port in {authority!r}") from exc


def _authorized(settings: HttpInboundSettings, headers: dict[str, str]) -> bool:
    if not settings.accounts:
        return True
    scheme, _, token = headers.get("proxy-authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(token).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return any(
        account.matches(user.encode(), password.encode())
        for account in settings.accounts
    )


async def handle_http(
    context: ServerContext,
    inbound: Inbound,
    settings: HttpInboundSettings,
    raw: trio.abc.Stream,
    source: str,
) -> None:
    """Serve one HTTP proxy client (``raw`` may be a socks inbound's buffered
    stream that found an HTTP request)."""
    stream = raw if isinstance(raw, BufferedStream) else BufferedStream(raw)
    with trio.fail_after(context.handshake_timeout()):
        try:
            head = await stream.receive_until(b"\r\n\r\n", MAX_HEAD)
        except ValueError as exc:
            await stream.send_all(_response("431 Request Header Fields Too Large"))
            raise RemoteProtocolError("HTTP request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        await stream.send_all(_response("400 Bad Request"))
        raise RemoteProtocolError("malformed HTTP request line") from exc
    header_lines = [line for line in lines[1:] if line]
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if not _authorized(settings, headers):
        await stream.send_all(
            _response(
                "407 Proxy Authentication Required",
                'Proxy-Authenticate: Basic realm="proxy"\r\n',
            )
        )
        return
    session = context.session(inbound, source, raw, level=settings.level)

    async def failed(exc: Exception) -> None:
        del exc
        await stream.send_all(_response("502 Bad Gateway"))

    if method.upper() == "CONNECT":
        host, port = _split_host_port(target, 443)

        async def connected() -> None:
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")

        await run_tunnel(
            context,
            stream,
            Destination(parse_address(host), port, "tcp"),
            session,
            on_connected=connected,
            on_failed=failed,
        )
        return
    url = urlsplit(target)
    authority = url.netloc or headers.get("host", "")
    if not authority:
        await stream.send_all(_response("400 Bad Request"))
        raise RemoteProtocolError("HTTP request without a host")
    host, port = _split_host_port(authority, 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    kept = [
        line
        for line in header_lines
        if not line.lower().startswith(("proxy-", "connection:", "keep-alive:"))
    ]
    rewritten = "\r\n".join(
        [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
    ).encode("latin-1")

    stream.unread(rewritten)
    await run_tunnel(
        context,
        stream,
        Destination(parse_address(host), port, "tcp"),
        session,
        on_failed=failed,
    )
