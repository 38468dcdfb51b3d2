"""WebSocket layer: a Trio stream carrying VMess bytes in binary messages.

Theory of operation: framing, masking and the HTTP/1.1 upgrade are wsproto's
(sans-IO); this module only moves bytes between a ``wsproto.WSConnection`` and
the transport underneath (TCP or TLS), the way ``trio.SSLStream`` drives an
``ssl.SSLObject``.

Server: ``accept_websocket`` reads the upgrade request, compares its path with
the configured one exactly, as v2ray does (the query string is not part of the
path), answers a plain 404 otherwise, and accepts. Early data may arrive in
``Sec-WebSocket-Protocol`` (Xray ``?ed=N``, sing-box and v2ray with that header
name) or in the configured ``earlyDataHeaderName``; it is base64url without
padding and becomes the first bytes the stream returns. When it came in
``Sec-WebSocket-Protocol`` the value is echoed back, as Xray and v2ray do, so
browser-grade clients accept the upgrade.

Client: with early data off the upgrade runs in ``dial``. With early data on the
stream is lazy, like Xray's and sing-box's: the upgrade waits for the first
``send_all`` and carries up to ``max_early_data`` of its bytes in the request.

Half-close: WebSocket has none. A close frame ends the whole connection, and Go
peers (gorilla, as used by v2ray and sing-box) answer it and then refuse to write,
which would cut off the other direction mid-download. ``send_eof`` therefore only
forbids further sending here; VMess already ends each direction with its own empty
chunk. The close frame goes out in ``aclose``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import operator
from typing import TYPE_CHECKING

import h11
import trio
import wsproto
import wsproto.events as ws_events
import wsproto.utilities
from wsproto.connection import ConnectionState, ConnectionType

from vtrio.errors import DialError, RemoteProtocolError
from vtrio.net.transport.http1 import (
    RECEIVE_SIZE,
    default_host_header,
    first_forwarded,
    normalized_path,
    path_matches,
    read_head,
)

if TYPE_CHECKING:
    from types import TracebackType

    from vtrio.config.model import WebSocketSettings

LOGGER = logging.getLogger("vtrio.net.transport.websocket")

EARLY_DATA_PROTOCOL_HEADER = "sec-websocket-protocol"
NORMAL_CLOSURE = 1000
# Close codes that are an orderly end rather than a protocol failure; 1006 is
# wsproto's code for a transport EOF without a close frame, which is how many
# peers simply hang up.
_ORDERLY_CLOSE_CODES = {NORMAL_CLOSURE, 1001, 1005, 1006}


class _ConflictDetector:
    """Raise ``BusyResourceError`` when two tasks use the same direction at once."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held = False


def encode_early_data(data: bytes) -> str:
    """Base64url without padding: the encoding Xray, v2ray and sing-box agree on."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_early_data(text: str) -> bytes | None:
    """Decode early data leniently (either alphabet, padding optional), like Xray.

    Returns:
        The bytes, or None when the value is not base64 (then it is an ordinary
        subprotocol name and is ignored).
    """
    cleaned = text.strip().rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        return None


class WebSocketStream(trio.abc.HalfCloseableStream):
    """VMess bytes over WebSocket binary messages.

    Attributes:
        transport_stream: the stream underneath (TCP or TLS).
        forwarded_for: the first address of ``X-Forwarded-For`` on the server side
            (the real client behind a reverse proxy), for the access log.
        path: the request target the client asked for (server side).
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        connection: wsproto.WSConnection,
        *,
        received: bytes = b"",
        forwarded_for: str | None = None,
        path: str = "",
        pending_upgrade: _ClientUpgrade | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self.forwarded_for = forwarded_for
        self.path = path
        self._ws = connection
        self._buffer = bytearray(received)
        self._send_conflict = _ConflictDetector(
            "another task is sending on this stream"
        )
        self._receive_conflict = _ConflictDetector(
            "another task is receiving on this stream"
        )
        # Pongs and close replies are written from the receiving task too.
        self._write_lock = trio.Lock()
        self._eof_sent = False
        self._remote_closed = False
        self._closed = False
        # Lazy client upgrade (early data); None once the connection is open.
        self._pending_upgrade = pending_upgrade
        self._upgraded = trio.Event()
        if pending_upgrade is None:
            self._upgraded.set()

    # -- sending -------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_can_send()
            payload = bytes(data)
            if self._pending_upgrade is not None:
                payload = await self._finish_upgrade(payload)
            if payload:
                if self._ws.state is not ConnectionState.OPEN:
                    await trio.lowlevel.checkpoint()
                    raise trio.BrokenResourceError("the peer closed the WebSocket")
                await self._write(self._ws.send(ws_events.BytesMessage(data=payload)))
            else:
                await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_can_send()
            await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            if self._pending_upgrade is not None:
                # The peer is waiting for us; open the connection without data.
                await self._finish_upgrade(b"")
            # See the module docstring: no close frame here, on purpose.
            self._eof_sent = True
            await trio.lowlevel.checkpoint()

    def _check_can_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was already called")

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.transport_stream.send_all(data)

    async def _finish_upgrade(self, data: bytes) -> bytes:
        """Run the deferred client upgrade; return the bytes it did not carry."""
        upgrade = self._pending_upgrade
        assert upgrade is not None
        early, rest = data[: upgrade.max_early_data], data[upgrade.max_early_data :]
        try:
            await upgrade.run(self.transport_stream, self._ws, early)
        finally:
            # On failure wsproto never reaches OPEN, so later calls report a
            # broken stream and aclose still closes the transport.
            self._pending_upgrade = None
            self._upgraded.set()
        return rest

    # -- receiving -----------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receive_conflict:
            if max_bytes is not None:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            await self._upgraded.wait()
            if self._ws.connection is None and not self._closed:
                raise trio.BrokenResourceError("the WebSocket upgrade failed")
            while True:
                # Frames that came with the upgrade are already queued in wsproto.
                await self._handle_events()
                if self._buffer or self._closed:
                    break
                if self._remote_closed:
                    await trio.lowlevel.checkpoint()
                    return b""
                data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                # An empty read is EOF, which wsproto spells None.
                self._ws.receive_data(bytes(data) if data else None)
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            if max_bytes is None or max_bytes >= len(self._buffer):
                chunk = bytes(self._buffer)
                self._buffer.clear()
            else:
                chunk = bytes(self._buffer[:max_bytes])
                del self._buffer[:max_bytes]
            return chunk

    async def _handle_events(self) -> None:
        """Act on the events wsproto has parsed: buffer data, answer control frames."""
        for event in self._ws.events():
            if isinstance(event, ws_events.BytesMessage):
                self._buffer += event.data
            elif isinstance(event, ws_events.TextMessage):
                self._buffer += event.data.encode()
            elif isinstance(event, ws_events.Ping):
                await self._reply(event.response())
            elif isinstance(event, ws_events.CloseConnection):
                self._remote_closed = True
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._reply(event.response())
                if event.code not in _ORDERLY_CLOSE_CODES:
                    raise trio.BrokenResourceError(
                        f"WebSocket closed by error {event.code}: {event.reason}"
                    )

    async def _reply(self, event: ws_events.Event) -> None:
        """Send a control frame; a peer that is already gone is not an error here."""
        try:
            await self._write(self._ws.send(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._remote_closed = True

    # -- closing -------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._upgraded.set()
        try:
            # Skip the close frame when a send is stuck: closing the transport is
            # what unblocks it.
            if self._ws.state is ConnectionState.OPEN and not self._write_lock.locked():
                await self._reply(ws_events.CloseConnection(code=NORMAL_CLOSURE))
        finally:
            await self.transport_stream.aclose()


class _ClientUpgrade:
    """The client half of the upgrade: send the request, read the response."""

    def __init__(
        self, settings: WebSocketSettings, host_header: str, label: str
    ) -> None:
        self.settings = settings
        self.host_header = host_header
        self.label = label
        self.max_early_data = settings.max_early_data

    def request(self, early: bytes) -> ws_events.Request:
        header_name = self.settings.early_data_header_name or EARLY_DATA_PROTOCOL_HEADER
        extra_headers = [
            (name.encode(), value.encode())
            for name, value in self.settings.headers
            if name.lower() != "host"
        ]
        subprotocols: list[str] = []
        if early:
            if header_name.lower() == EARLY_DATA_PROTOCOL_HEADER:
                # Offered as a subprotocol, so wsproto accepts the server's echo.
                subprotocols.append(encode_early_data(early))
            else:
                extra_headers.append(
                    (header_name.encode(), encode_early_data(early).encode())
                )
        return ws_events.Request(
            host=self.host_header,
            target=normalized_path(self.settings.path),
            extra_headers=extra_headers,
            subprotocols=subprotocols,
        )

    async def run(
        self, transport: trio.abc.Stream, connection: wsproto.WSConnection, early: bytes
    ) -> None:
        """Upgrade; frames that arrive with the response stay queued in wsproto.

        Raises:
            DialError: the server refused or closed, or the response was not valid.
        """
        try:
            await transport.send_all(connection.send(self.request(early)))
            while True:
                data = await transport.receive_some(RECEIVE_SIZE)
                if not data:
                    raise DialError(
                        f"WebSocket upgrade to {self.label}: connection closed"
                    )
                connection.receive_data(bytes(data))
                for event in connection.events():
                    if isinstance(event, ws_events.AcceptConnection):
                        return
                    if isinstance(event, ws_events.RejectConnection):
                        raise DialError(
                            f"WebSocket upgrade to {self.label} refused: "
                            f"HTTP {event.status_code}"
                        )
        except (
            wsproto.utilities.RemoteProtocolError,
            UnicodeError,  # a response header that is not ASCII
            trio.BrokenResourceError,
            OSError,
        ) as exc:
            raise DialError(f"WebSocket upgrade to {self.label}: {exc}") from exc


async def dial_websocket(
    settings: WebSocketSettings,
    transport: trio.abc.Stream,
    host: str,
    port: int,
    *,
    secure: bool,
) -> WebSocketStream:
    """Open the client side of a WebSocket over a connected transport.

    Args:
        settings: the outbound's WebSocket settings.
        transport: the connected TCP or TLS stream.
        host: the dialled host, the Host header when none is configured.
        port: the dialled port.
        secure: whether ``transport`` is TLS (decides the default port).

    Returns:
        The stream; already upgraded unless early data is on, in which case the
        upgrade runs on its first ``send_all``.

    Raises:
        DialError: the server refused the upgrade.
    """
    configured_host = settings.host or next(
        (value for name, value in settings.headers if name.lower() == "host"), None
    )
    host_header = configured_host or default_host_header(host, port, secure=secure)
    upgrade = _ClientUpgrade(settings, host_header, f"{host}:{port}{settings.path}")
    connection = wsproto.WSConnection(ConnectionType.CLIENT)
    if settings.max_early_data > 0:
        return WebSocketStream(transport, connection, pending_upgrade=upgrade)
    await upgrade.run(transport, connection, b"")
    return WebSocketStream(transport, connection)


def _early_data(
    request: ws_events.Request, header_name: str
) -> tuple[bytes, str | None]:
    """Early data of an upgrade request, and the subprotocol to echo (if any)."""
    for protocol in request.subprotocols:
        data = decode_early_data(protocol)
        if data:
            return data, protocol
    if header_name and header_name.lower() != EARLY_DATA_PROTOCOL_HEADER:
        wanted = header_name.lower().encode()
        for name, value in request.extra_headers:
            if name.lower() == wanted:
                return decode_early_data(value.decode("latin-1")) or b"", None
    return b"", None


def _header(request: ws_events.Request, name: bytes) -> str | None:
    for key, value in request.extra_headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def accept_websocket(
    settings: WebSocketSettings, transport: trio.abc.Stream
) -> WebSocketStream:
    """Run the server side of the upgrade.

    Args:
        settings: the inbound's WebSocket settings.
        transport: the accepted TCP or TLS stream.

    Returns:
        The open stream; early data, if any, is its first data.

    Raises:
        RemoteProtocolError: not an upgrade request, or a path other than the
            configured one (after a 404 answer).
    """
    head, rest = await read_head(transport, "WebSocket upgrade request")
    connection = wsproto.WSConnection(ConnectionType.SERVER)
    try:
        connection.receive_data(head)
        request = next(
            event
            for event in connection.events()
            if isinstance(event, ws_events.Request)
        )
    except wsproto.utilities.RemoteProtocolError as exc:
        await _refuse(
            transport, connection, exc.event_hint or ws_events.RejectConnection()
        )
        raise RemoteProtocolError(f"bad WebSocket upgrade request: {exc}") from exc
    except UnicodeError as exc:
        # wsproto decodes Host as IDNA and the target as ASCII.
        await _refuse(transport, connection, ws_events.RejectConnection())
        raise RemoteProtocolError(f"bad WebSocket upgrade request: {exc}") from exc
    except StopIteration:
        raise RemoteProtocolError("incomplete WebSocket upgrade request") from None
    expected = normalized_path(settings.path)
    if not path_matches(request.target, settings.path):
        LOGGER.info(
            "WebSocket request for path %r, Host %r: 404", request.target, request.host
        )
        await _refuse(
            transport, connection, ws_events.RejectConnection(status_code=404)
        )
        raise RemoteProtocolError(
            f"WebSocket path {request.target!r} (Host {request.host!r}) "
            f"is not {expected!r}"
        )
    early, echo = _early_data(request, settings.early_data_header_name)
    LOGGER.debug(
        "WebSocket upgrade: path %r, Host %r, %d bytes of early data",
        request.target,
        request.host,
        len(early),
    )
    await transport.send_all(
        connection.send(ws_events.AcceptConnection(subprotocol=echo))
    )
    # Frames the client sent right behind its request (wsproto's server would
    # drop them with the request head).
    connection.receive_data(rest)
    return WebSocketStream(
        transport,
        connection,
        received=early,
        forwarded_for=first_forwarded(_header(request, b"x-forwarded-for")),
        path=request.target,
    )


async def _refuse(
    transport: trio.abc.Stream, connection: wsproto.WSConnection, event: ws_events.Event
) -> None:
    """Answer an upgrade with an HTTP error, as far as the connection still allows."""
    try:
        data = connection.send(event)
    except (h11.LocalProtocolError, wsproto.utilities.LocalProtocolError):
        return
    with contextlib.suppress(trio.BrokenResourceError):
        await transport.send_all(data)
