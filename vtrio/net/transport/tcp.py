"""TCP streams and listeners on stdlib sockets, driven by Trio's I/O waits.

Theory of operation: ``trio.SocketStream`` reaches the system call through
four layers (the stream, an error-translating context manager, the Trio
socket's wrapper and its async ``_try_sync`` context manager), about 9 µs of
Python per call, and a tunnel makes some twenty of them before its first
byte. These classes make the call directly on a non-blocking stdlib socket
and wait with ``trio.lowlevel.wait_readable`` / ``wait_writable`` only when
it would block: half the cost, with Trio's semantics kept. Every operation
is a cancel point (a cancelled caller is refused before the call). Receiving
and accepting are also schedule points when they did not wait; sending,
half-closing and a connect the kernel finished at once are not: every loop
that sends also receives, so each turn of it still yields once, and the
yield after a write cost a tunnel some seven trips through the scheduler
(3 µs each) for nothing. Trio's generic stream checks pass on them
(``tests/net/test_tcp.py``).

Errors map as in ``trio.SocketStream``: a socket closed under us is
``trio.ClosedResourceError``, any other ``OSError`` on a connected stream is
``trio.BrokenResourceError``. ``connect_tcp`` and ``accept`` raise
``OSError`` as the socket calls do.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import select
import socket
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

from vtrio.net.transport.transparent import set_mark

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

DEFAULT_RECEIVE_SIZE = 65536
# Like trio.SocketStream: bounds how much unsent data the kernel holds for
# us, so a slow reader pushes back on the relay instead of filling buffers.
NOTSENT_LOWAT = 16384
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
# Accept failures that concern one incoming connection, not the listener
# (the list trio.SocketListener skips).
_SKIPPED_ACCEPT_ERRNOS = {
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
}


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class TCPStream(trio.abc.HalfCloseableStream):
    """A connected TCP socket as a half-closeable Trio stream.

    ``socket`` is the stdlib socket, for addresses and options.
    """

    __slots__ = ("_eof_sent", "_sending", "_waiting", "peer", "socket")

    def __init__(
        self, sock: socket.socket, peer: tuple[str, int] | None = None
    ) -> None:
        """``peer`` is the remote address when the caller knows it (accept)."""
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)
        self.socket = sock
        self.peer = peer
        self._sending = False
        self._eof_sent = False
        # Tasks inside a wait on this socket: only those need notify_closing
        # (trio drops a socket from epoll once nobody waits on it).
        self._waiting = 0
        # A connection reset before it was accepted may refuse options (its
        # first read reports that, the accept loop must not fail), and so
        # does a socket that is not TCP.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT
                )

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if size < 1:
            raise ValueError("max_bytes must be at least 1")
        await checkpoint_if_cancelled()
        if (data := self.receive_nowait(size)) is not None:
            await cancel_shielded_checkpoint()
            return data
        while True:
            await self._wait(wait_readable)
            if (data := self.receive_nowait(size)) is not None:
                return data

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What has already arrived, without waiting and without a checkpoint:
        None when nothing has, b"" at EOF. A caller that would wait under a
        timeout needs no cancel scope when the bytes are there."""
        try:
            return self.socket.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def peek(self, max_bytes: int) -> bytes:
        """Bytes that have arrived, left in the socket for the next read
        (waiting for some if none have; b"" at EOF)."""
        await checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = self.socket.recv(max_bytes, socket.MSG_PEEK)
            except BlockingIOError:
                await self._wait(wait_readable)
                waited = True
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            if not waited:
                await cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self._eof_sent:
            raise trio.ClosedResourceError("cannot send after send_eof")
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the socket was already closed")
        await checkpoint_if_cancelled()
        self._sending = True
        try:
            await self._send_all(data)
        finally:
            self._sending = False

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _stream_error(exc) from exc
        with memoryview(data) as view:
            if sent == len(view):
                return
            while sent < len(view):
                await self._wait(wait_writable)
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the socket was already closed")
        self._sending = True
        try:
            await self._wait(wait_writable)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        await checkpoint_if_cancelled()
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the socket was already closed")
        if not self._eof_sent:
            self._eof_sent = True
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise _stream_error(exc) from exc

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        self._waiting += 1
        try:
            await wait(self.socket)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Close now, waking any task blocked on the socket; idempotent."""
        if self.socket.fileno() >= 0:
            if self._waiting:
                notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def connect_ip(
    host: str, port: int, family: int, local: str | None = None, mark: int = 0
) -> TCPStream:
    """One non-blocking connect to an IP literal, from ``local`` if given,
    with the socket marked ``mark`` (SO_MARK) if not 0.

    Raises:
        OSError: the connection failed, or marking needs CAP_NET_ADMIN.
    """
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        await checkpoint_if_cancelled()
        if mark:
            set_mark(sock, mark)
        if local is not None:
            sock.bind((local, 0))
        try:
            sock.connect((host, port))
        except BlockingIOError:
            # Over loopback (a proxy's usual target or server) the handshake
            # is done when connect returns: a zero-timeout poll saves the
            # epoll round trip, and only a connection still under way waits.
            if not _writable_now(sock):
                await wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(
                    code, f"Error connecting to {host}:{port}: {os.strerror(code)}"
                ) from None
    except BaseException:
        sock.close()
        raise
    return TCPStream(sock)


def _writable_now(sock: socket.socket) -> bool:
    """A zero-timeout poll (``poll``, not ``select``: descriptors past 1023)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def from_trio_stream(stream: trio.SocketStream) -> TCPStream:
    """Take over the socket of a stream trio's own dialer connected."""
    return TCPStream(socket.socket(fileno=stream.socket.detach()))


class TCPListener(trio.abc.Listener[TCPStream]):
    """A listening socket whose ``accept`` returns :class:`TCPStream`."""

    __slots__ = ("socket",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock

    async def accept(self) -> TCPStream:
        """The next connection.

        Raises:
            trio.ClosedResourceError: the listener was closed.
            OSError: the listener cannot accept (e.g. out of descriptors).
        """
        await checkpoint_if_cancelled()
        sock = self.socket
        waited = False
        while True:
            try:
                accepted, address = sock.accept()
            except BlockingIOError:
                await wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise trio.ClosedResourceError("the listener was closed") from exc
                if exc.errno in _SKIPPED_ACCEPT_ERRNOS:
                    continue
                raise
            if not waited:
                await cancel_shielded_checkpoint()
            # A Unix socket's peer has no address.
            return TCPStream(accepted, address[:2] if address else None)

    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Close now, waking a task blocked in accept; idempotent. Being
        synchronous, it closes every listener of an inbound even while the
        task closing them is cancelled."""
        if self.socket.fileno() >= 0:
            notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def tcp_under(stream: trio.abc.AsyncResource) -> TCPStream | None:
    """The TCP stream at the bottom of a stack of layers, if there is one.

    Layers name what they wrap ``transport_stream`` (VMess, WebSocket, trio's
    SSLStream, the handshake buffer) or ``ssl_stream`` (vtrio's TLS stream).
    """
    layer: object = stream
    while not isinstance(layer, TCPStream):
        inner = getattr(layer, "transport_stream", None) or getattr(
            layer, "ssl_stream", None
        )
        if inner is None:
            return None
        layer = inner
    return layer


def address_name(address: tuple[str, int]) -> str:
    """``host:port``, the IPv6 host in brackets, as logs and rules read it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_name(stream: trio.abc.AsyncResource) -> str:
    """The ``host:port`` a connection came in on ("" for other streams)."""
    tcp = tcp_under(stream)
    if tcp is None:
        return ""
    try:
        name = tcp.socket.getsockname()
    except OSError:
        return ""
    if not isinstance(name, tuple):
        return ""  # a Unix socket
    return address_name((str(name[0]), int(name[1])))


async def close_forcefully(stream: trio.abc.AsyncResource) -> None:
    """Close a stream at once, like ``trio.aclose_forcefully``.

    Over a TCP socket, closing the socket is the whole forceful close of every
    layer above it (none of them has anything left to do once its transport
    is gone); trio's version would raise and catch a ``Cancelled`` inside each
    layer's ``aclose`` to get there, which costs more than the close itself.
    Other streams (in-memory ones) go through ``trio.aclose_forcefully``.
    """
    tcp = tcp_under(stream)
    if tcp is None:
        await trio.aclose_forcefully(stream)
    else:
        tcp.close()
