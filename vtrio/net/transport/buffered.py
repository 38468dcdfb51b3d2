"""A stream wrapper that can read exact sizes and lines, then acts as a stream.

Theory of operation: the socks and http inbounds parse a small handshake and
then hand the very same connection to the relay. A client may pipeline its
first payload right behind the handshake, so whatever was read past the
handshake stays in a buffer that the stream returns before reading further.
Sniffing looks ahead the same way (:meth:`BufferedStream.read_ahead`), and an
EOF met while looking ahead is kept for the read that reaches it.
"""

from __future__ import annotations

import trio

from vtrio.net.transport.tcp import TCPStream

RECEIVE_SIZE = 16384


class BufferedStream(trio.abc.HalfCloseableStream):
    """Wraps a stream; ``receive_exactly`` / ``receive_line`` for handshakes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.transport_stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self) -> None:
        data = await self.transport_stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise trio.BrokenResourceError("the peer closed during the handshake")
        self._buffer += data

    async def receive_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes.

        Raises:
            trio.BrokenResourceError: the peer closed first.
        """
        while len(self._buffer) < size:
            await self._fill()
        return self._take(size)

    async def peek(self, size: int) -> bytes:
        """The next ``size`` bytes, left in place for the next read.

        Raises:
            trio.BrokenResourceError: the peer closed first.
        """
        while len(self._buffer) < size:
            await self._fill()
        return bytes(self._buffer[:size])

    def _take(self, size: int) -> bytes:
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    async def receive_until(self, delimiter: bytes, limit: int) -> bytes:
        """Bytes up to and including ``delimiter``.

        Raises:
            trio.BrokenResourceError: the peer closed first.
            ValueError: more than ``limit`` bytes without the delimiter.
        """
        start = 0
        while True:
            index = self._buffer.find(delimiter, start)
            if index >= 0:
                return self._take(index + len(delimiter))
            if len(self._buffer) > limit:
                raise ValueError(f"no {delimiter!r} within {limit} bytes")
            start = max(0, len(self._buffer) - len(delimiter) + 1)
            await self._fill()

    async def read_ahead(self) -> bool:
        """Read once more into the buffer, leaving it there; False at EOF."""
        if self._eof:
            await trio.lowlevel.checkpoint()
            return False
        data = await self.transport_stream.receive_some(RECEIVE_SIZE)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def unread(self, data: bytes) -> None:
        """Put ``data`` in front of what the next read returns."""
        self._buffer[:0] = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffer or self._eof:
            await trio.lowlevel.checkpoint()
            return self._take(len(self._buffer) if max_bytes is None else max_bytes)
        return bytes(await self.transport_stream.receive_some(max_bytes))

    @property
    def buffered(self) -> int:
        """How many bytes read past the handshake are waiting here."""
        return len(self._buffer)

    @property
    def ahead(self) -> bytes:
        """The bytes waiting here, left in place."""
        return bytes(self._buffer)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Bytes left over from the handshake, else what a TCP transport has
        already received; None when that would mean waiting (or the
        transport cannot tell). See :meth:`TCPStream.receive_nowait`."""
        if self._buffer or self._eof:
            return self._take(max_bytes)
        if isinstance(self.transport_stream, TCPStream):
            return self.transport_stream.receive_nowait(max_bytes)
        return None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        stream = self.transport_stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        else:
            await stream.aclose()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()
