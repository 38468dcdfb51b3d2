"""HTTPUpgrade transport (Xray, v2fly 5, sing-box): an HTTP/1.1 upgrade that
looks like a WebSocket one, then the bare stream.

Theory of operation: the client sends ``GET <path>`` with ``Connection:
Upgrade`` and ``Upgrade: websocket``; the server answers ``101 Switching
Protocols`` with the same two headers, and from then on VMess runs on the TCP
(or TLS) stream unframed, so it half-closes where the stream underneath can.
Heads are parsed by h11 (sans-IO); bytes behind a head are kept and returned
first.

Differences between the peers decide some details. sing-box's server refuses
a request carrying ``Sec-WebSocket-Key`` (it takes it for a real WebSocket),
so the client sends none; Xray's client does send one, and the server then
answers ``Sec-WebSocket-Accept`` as Xray's does. The server compares the
decoded path without the query with the configured one (both peers do) and
the Host when one is configured; a request it refuses gets a plain 404,
whichever check failed, so a prober learns nothing of which one it was.

Xray's ``?ed=N`` in the path means "do not wait for the answer": the client
returns at once and its first payload follows the request in the same round
trip; the answer is then read before the first bytes received. Without it the
client waits for the answer (sing-box's server loses, now and then, bytes that
arrive before it has answered).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import h11
import trio
import wsproto.utilities

from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.transport.http1 import (
    default_host_header,
    first_forwarded,
    normalized_path,
    path_matches,
    read_head,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from vtrio.config.model import WebSocketSettings

LOGGER = logging.getLogger("vtrio.net.transport.httpupgrade")

REQUEST = "HTTPUpgrade request"
ANSWER = "HTTPUpgrade answer"
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
)
_REFUSAL = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """Lower-cased names to their first value, as Go's ``Header.Get``."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        found.setdefault(name, value.decode("latin-1"))
    return found


def _is_upgrade(headers: dict[bytes, str]) -> bool:
    connection = headers.get(b"connection", "")
    tokens = {token.strip().lower() for token in connection.split(",")}
    return "upgrade" in tokens and headers.get(b"upgrade", "").lower() == "websocket"


def _host_name(host: str) -> str:
    """A Host value without its port, lower-cased (``[::1]:80`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


class HTTPUpgradeStream(BufferedStream):
    """The stream after the upgrade; what came behind the head is read first.

    Attributes:
        forwarded_for: the first address of ``X-Forwarded-For`` on the server
            side (the client behind a reverse proxy).
        path: the request target the client asked for (server side).
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        received: bytes = b"",
        *,
        forwarded_for: str | None = None,
        path: str = "",
        unanswered: _Request | None = None,
    ) -> None:
        """``unanswered`` is a client's request whose answer is still unread
        (Xray's ``?ed=N``); the first receive reads it."""
        super().__init__(transport)
        self._buffer += received
        self.forwarded_for = forwarded_for
        self.path = path
        self._unanswered = unanswered

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if (request := self._unanswered) is not None:
            self._unanswered = None
            try:
                self._buffer += await request.read_answer(self.transport_stream)
            except DialError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
        return await super().receive_some(max_bytes)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        if self._unanswered is not None:
            return None
        return super().receive_nowait(max_bytes)


class _Request:
    """A client's request: h11's view of it, and the server it went to."""

    def __init__(self, connection: h11.Connection, label: str) -> None:
        self.connection = connection
        self.label = label

    async def read_answer(self, transport: trio.abc.Stream) -> bytes:
        """Check the server's answer; return the bytes that came behind it.

        Raises:
            DialError: the server refused, closed, or did not answer an upgrade.
        """
        label = self.label
        try:
            head, rest = await read_head(transport, ANSWER, b"HTTP/")
            self.connection.receive_data(head)
            answer = self.connection.next_event()
        except (
            RemoteProtocolError,
            h11.RemoteProtocolError,
            trio.BrokenResourceError,
        ) as exc:
            raise DialError(f"HTTPUpgrade to {label}: {exc}") from exc
        if not isinstance(answer, h11.InformationalResponse | h11.Response):
            raise DialError(f"HTTPUpgrade to {label}: incomplete answer")
        if answer.status_code != 101 or not _is_upgrade(_headers(answer.headers)):
            raise DialError(
                f"HTTPUpgrade to {label} refused: HTTP {answer.status_code}"
                f" {answer.reason.decode('latin-1')}"
            )
        return rest


async def dial_httpupgrade(
    settings: WebSocketSettings,
    transport: trio.abc.Stream,
    host: str,
    port: int,
    *,
    secure: bool,
) -> HTTPUpgradeStream:
    """Upgrade a connected TCP or TLS stream.

    Args:
        settings: path, Host, extra headers; ``max_early_data`` > 0 (Xray's
            ``?ed=N``) returns without waiting for the answer.
        transport: the connected stream.
        host: the dialled host, the Host header when none is configured.
        port: the dialled port.
        secure: whether ``transport`` is TLS (decides the default port).

    Raises:
        DialError: the server refused the upgrade or the request could not
            be sent.
    """
    host_header = settings.host or default_host_header(host, port, secure=secure)
    headers = [("Host", host_header)]
    headers += [
        (name, value)
        for name, value in settings.headers
        if name.lower() not in ("host", "connection", "upgrade")
    ]
    headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    request = _Request(h11.Connection(h11.CLIENT), f"{host}:{port}{settings.path}")
    try:
        head = request.connection.send(
            h11.Request(
                method="GET", target=normalized_path(settings.path), headers=headers
            )
        )
        request.connection.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:  # a header value h11 will not write
        raise DialError(f"HTTPUpgrade to {request.label}: {exc}") from exc
    try:
        await transport.send_all(head or b"")
    except (trio.BrokenResourceError, OSError) as exc:
        raise DialError(f"HTTPUpgrade to {request.label}: {exc}") from exc
    if settings.max_early_data > 0:
        return HTTPUpgradeStream(transport, unanswered=request)
    return HTTPUpgradeStream(transport, await request.read_answer(transport))


async def accept_httpupgrade(
    settings: WebSocketSettings, transport: trio.abc.Stream
) -> HTTPUpgradeStream:
    """Run the server side of the upgrade.

    Raises:
        RemoteProtocolError: not an upgrade request, or not for the configured
            path (or Host); it was answered with a 404 first.
    """
    head, rest = await read_head(transport, REQUEST)
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head)
    try:
        request = connection.next_event()
    except h11.RemoteProtocolError as exc:
        await _refuse(transport)
        raise RemoteProtocolError(f"bad {REQUEST}: {exc}") from exc
    if not isinstance(request, h11.Request):
        raise RemoteProtocolError(f"incomplete {REQUEST}")
    headers = _headers(request.headers)
    target = request.target.decode("latin-1")
    host = headers.get(b"host", "")
    expected = normalized_path(settings.path)
    if not path_matches(target, settings.path):
        reason = f"path {target!r} is not {expected!r}"
    elif settings.host and _host_name(host) != _host_name(settings.host):
        reason = f"Host {host!r} is not {settings.host!r}"
    elif not _is_upgrade(headers):
        reason = "not an upgrade to websocket"
    else:
        reason = ""
    if reason:
        LOGGER.info("HTTPUpgrade request for %r, Host %r: 404", target, host)
        await _refuse(transport)
        raise RemoteProtocolError(f"{REQUEST}: {reason} (Host {host!r})")
    answer = _SWITCHING
    if key := headers.get(b"sec-websocket-key"):
        token = wsproto.utilities.generate_accept_token(key.encode("latin-1"))
        answer += b"Sec-WebSocket-Accept: " + token + b"\r\n"
    await transport.send_all(answer + b"\r\n")
    return HTTPUpgradeStream(
        transport,
        rest,
        forwarded_for=first_forwarded(headers.get(b"x-forwarded-for")),
        path=target,
    )


async def _refuse(transport: trio.abc.Stream) -> None:
    """A plain 404, as far as the connection still takes it."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await transport.send_all(_REFUSAL)
