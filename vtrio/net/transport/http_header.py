"""The "http" TCP header: a connection dressed as one HTTP/1.1 exchange.

Theory of operation: with ``tcpSettings.header.type: "http"`` (v2ray, Xray)
the client's first write is preceded by a request head and the server's
first write by a response head; each side reads and drops the other's head
before its first bytes, and nothing after the heads is framed. The heads are
drawn per connection from the configured choices (one value of each header,
one path). A server checks the request line and header lines as they come
in, and the path against its list; a connection it never answered (a bad or
over-long head, a wrong path, a failed VMess handshake, a timeout) gets a
400 Bad Request as it closes, a wrong path a 404 Not Found, which are the
bytes a v2ray or Xray server sends a prober in the same cases.
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from vtrio.config.model import HttpResponseHead
from vtrio.errors import RemoteProtocolError
from vtrio.net.transport.buffered import BufferedStream
from vtrio.net.transport.http1 import not_http_message

if TYPE_CHECKING:
    from vtrio.config.model import (
        HeaderChoices,
        HttpHeaderSettings,
        HttpRequestHead,
    )

# v2ray's bound on a head (maxHeaderLength): past it, a server answers 400.
MAX_HEAD = 8192
RECEIVE_SIZE = 16384
# How long a refusal may take to go out (it is shielded from cancellation).
REFUSAL_TIMEOUT = 1.0
_END = b"\r\n\r\n"
# Go's http.readRequest: "METHOD target HTTP/x.y", and "Name: value" lines.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ (\S+) HTTP/[0-9]\.[0-9]")
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:.*|[ \t].*")

Pick = Callable[[Sequence[str]], str]


def _pick_default(choices: Sequence[str]) -> str:
    return random.choice(choices) if choices else ""


def _head_lines(first: str, headers: HeaderChoices, pick: Pick) -> list[str]:
    return [first, *(f"{name}: {pick(values)}" for name, values in headers)]


def request_head(request: HttpRequestHead, pick: Pick = _pick_default) -> bytes:
    """A client's request head: one path and one value of each header."""
    first = f"{request.method} {pick(request.paths)} HTTP/{request.version}"
    lines = _head_lines(first, request.headers, pick)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_head(
    response: HttpResponseHead, now: float | None = None, pick: Pick = _pick_default
) -> bytes:
    """A server's response head, with a Date unless one is configured."""
    first = f"HTTP/{response.version} {response.status} {response.reason}"
    lines = _head_lines(first, response.headers, pick)
    if not any(name.lower() == "date" for name, _ in response.headers):
        lines.append(f"Date: {email.utils.formatdate(now, usegmt=True)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _refusal(status: str, reason: str) -> HttpResponseHead:
    closing = (
        ("Connection", ("close",)),
        ("Cache-Control", ("private",)),
        ("Content-Length", ("0",)),
    )
    return HttpResponseHead(status=status, reason=reason, headers=closing)


BAD_REQUEST = _refusal("400", "Bad Request")
NOT_FOUND = _refusal("404", "Not Found")


def request_target(head: bytes) -> str:
    """Check the complete lines of a (partial) request head, as Go's
    ``http.readRequest`` does (lines end at LF, a CR before it is dropped);
    the target of its request line once that line is in, else "".

    Raises:
        RemoteProtocolError: a line is not what an HTTP request has there.
    """
    *complete, _ = head.split(b"\n")
    if not complete:
        return ""
    match = _REQUEST_LINE.fullmatch(complete[0].removesuffix(b"\r"))
    if match is None or (
        not match[1].startswith((b"/", b"*")) and b"://" not in match[1]
    ):
        raise RemoteProtocolError(not_http_message("HTTP request", head[:8]))
    for index, raw in enumerate(complete[1:], 1):
        line = raw.removesuffix(b"\r")
        if not line:
            continue  # the blank line that ends the head
        if not _HEADER_LINE.fullmatch(line) or (index == 1 and line[:1] in b" \t"):
            raise RemoteProtocolError(f"malformed HTTP header line {line[:40]!r}")
    return match[1].decode("latin-1")


def target_path(target: str) -> str:
    """The decoded path of a request target, as Go's ``URL.Path``."""
    return urllib.parse.unquote(urllib.parse.urlsplit(target).path)


class HttpHeaderStream(BufferedStream):
    """A stream whose first bytes each way are an HTTP head.

    ``head`` goes out in front of the first bytes sent. A client reads and
    drops the server's head on its first receive; a server reads the
    request in :func:`accept_http_header`, and :meth:`refuse` sends its
    refusal instead of ``head`` if it never answered.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        head: bytes,
        *,
        awaiting_head: bool,
        refusal: bytes = b"",
    ) -> None:
        super().__init__(stream)
        self._head = head
        self._awaiting_head = awaiting_head
        self._refusal = refusal

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._awaiting_head and not await self._skip_response_head():
            return b""
        return await super().receive_some(max_bytes)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        return None if self._awaiting_head else super().receive_nowait(max_bytes)

    async def _skip_response_head(self) -> bool:
        """Drop the server's head; False if the server closed before one."""
        while (end := self._buffer.find(_END)) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise RemoteProtocolError(f"HTTP response head over {MAX_HEAD} bytes")
            data = await self.transport_stream.receive_some(RECEIVE_SIZE)
            if not data:
                if self._buffer:
                    raise trio.BrokenResourceError(
                        "the server closed inside its HTTP response head"
                    )
                return False
            self._buffer += data
        head = self._take(end + len(_END))
        self._awaiting_head = False
        status = head.split(b"\r\n", 1)[0]
        if status.endswith((b" 400 Bad Request", b" 404 Not Found")) and (
            b"\r\nContent-Length: 0\r\n" in head
        ):
            # v2ray's refusals; any other status may be a configured disguise.
            raise RemoteProtocolError(
                f"the server refused the HTTP header: {status.decode('latin-1')}"
                + (" (it serves other paths)" if b" 404 " in status else "")
            )
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._head:
            head, self._head = self._head, b""
            data = head + bytes(data)
        await self.transport_stream.send_all(data)

    async def send_eof(self) -> None:
        if self._head:
            await self.send_all(b"")
        await super().send_eof()

    async def refuse(self, refusal: bytes | None = None) -> None:
        """Send the refusal if nothing was answered yet (at most once; shielded
        from cancellation and bounded by ``REFUSAL_TIMEOUT``)."""
        if not self._head:
            return
        self._head = b""
        deadline = trio.current_time() + REFUSAL_TIMEOUT
        with (
            trio.CancelScope(deadline=deadline, shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.transport_stream.send_all(refusal or self._refusal)

    async def receive_request_head(self, paths: Sequence[str]) -> None:
        """Read the client's request head; its path must be one of ``paths``.

        Raises:
            RemoteProtocolError: not a request, over ``MAX_HEAD`` bytes, or the
                client closed before its end; the refusal was sent.
        """
        checked = -1
        try:
            while (end := self._buffer.find(_END)) < 0:
                if (last := self._buffer.rfind(b"\n")) > checked:
                    checked = last
                    request_target(bytes(self._buffer[: last + 1]))
                if len(self._buffer) > MAX_HEAD:
                    raise RemoteProtocolError(
                        f"HTTP request head over {MAX_HEAD} bytes"
                    )
                await self._fill()
            target = request_target(self._take(end + len(_END)))
        except BaseException:
            await self.refuse()
            raise
        if target_path(target) not in paths:
            await self.refuse(response_head(NOT_FOUND))
            raise RemoteProtocolError(
                f"HTTP header for path {target!r}: not served here"
            )


async def accept_http_header(
    settings: HttpHeaderSettings, transport: trio.abc.Stream
) -> HttpHeaderStream:
    """The server side: read the request head, answer with the first bytes."""
    stream = HttpHeaderStream(
        transport,
        response_head(settings.response),
        awaiting_head=False,
        refusal=response_head(BAD_REQUEST),
    )
    await stream.receive_request_head(settings.request.paths)
    return stream


def dial_http_header(
    settings: HttpHeaderSettings, transport: trio.abc.Stream
) -> HttpHeaderStream:
    """The client side: nothing is sent until the first bytes are."""
    return HttpHeaderStream(
        transport, request_head(settings.request), awaiting_head=True
    )
