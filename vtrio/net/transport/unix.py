"""Unix domain sockets: a server behind nginx or HAProxy on the same host, and
v2ray's ``domainsocket`` transport.

Theory of operation: a socket is named as Xray writes an inbound's
``listen``: ``/path`` is a file, ``@name`` a Linux abstract name, ``@@name``
an abstract name padded with NULs to the whole ``sun_path`` (as HAProxy and
v2ray's ``padding`` write it; the two ends must agree, since the padding is
part of the name). v2ray's ``dsSettings`` are turned into the same names. An
accepted or dialled Unix socket is a :class:`TCPStream` (the same socket
calls), so TLS, WebSocket and the PROXY header stack on it unchanged; it has
no peer address, so without a PROXY header the client shows as ``?``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

import trio

from vtrio.net.transport.tcp import TCPListener, TCPStream

# sizeof(sockaddr_un.sun_path) on Linux.
SUN_PATH_SIZE = 108


def socket_address(name: str) -> str | bytes:
    """The address ``bind`` and ``connect`` take for a socket name.

    Raises:
        ValueError: the name does not fit in ``sun_path``.
    """
    if name.startswith("@@"):
        raw = b"\0" + name[2:].encode()
        if len(raw) > SUN_PATH_SIZE:
            raise ValueError(f"{name}: longer than {SUN_PATH_SIZE} bytes")
        return raw.ljust(SUN_PATH_SIZE, b"\0")
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class UnixListener(TCPListener):
    """A listening Unix socket; a file it bound is removed when it closes."""

    __slots__ = ("name",)

    def __init__(self, sock: socket.socket, name: str) -> None:
        super().__init__(sock)
        self.name = name

    def address(self) -> tuple[str, int]:
        return self.name, 0

    def close(self) -> None:
        if not self.name.startswith("@") and self.socket.fileno() >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.name)
        super().close()


def open_unix_listener(
    name: str, backlog: int, mode: int | None = None
) -> UnixListener:
    """Bind and listen on the Unix socket ``name``; ``mode`` sets a file's
    permissions (Xray's ``/path,0666``). A socket file left by an earlier
    run is replaced; any other file there is an error.

    Raises:
        OSError: the name cannot be bound.
    """
    if not name.startswith("@"):
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.stat(name).st_mode):
                raise FileExistsError(f"{name} exists and is not a socket")
            os.unlink(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(socket_address(name))
        if mode is not None and not name.startswith("@"):
            os.chmod(name, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return UnixListener(sock, name)


async def connect_unix(name: str) -> TCPStream:
    """A stream to the Unix socket ``name``.

    Raises:
        OSError: nothing listens there.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(socket_address(name))
    except BaseException:
        sock.close()
        raise
    return TCPStream(socket.socket(fileno=sock.detach()))
