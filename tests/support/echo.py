"""Loopback targets: the far end of a proxy chain in tests.

Theory of operation: an echo target returns every byte (TCP) or datagram
(UDP) unchanged to its sender, so a test compares what it sent with what came
back and needs no second channel. A source target writes fixed bytes and
closes first, so a test also sees how the end of the response direction
crosses the chain. All bind port 0 and report the port through
``task_status``, for ``nursery.start``.
"""

from __future__ import annotations

import socket

import trio

MAX_DATAGRAM = 65535
RECEIVE_SIZE = 64 * 1024


async def serve_tcp_echo(
    host: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Echo every TCP connection on ``host`` (port 0); report the port."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(RECEIVE_SIZE):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(echo, listeners)


async def serve_udp_echo(
    host: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Return every datagram on ``host`` (port 0) to its sender; report the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind((host, 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, sender = await sock.recvfrom(MAX_DATAGRAM)
            await sock.sendto(data, sender)


async def serve_tcp_source(
    host: str,
    payload: bytes,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``payload`` to every TCP connection on ``host``, then close it."""

    async def send(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(payload)

    listeners = await trio.open_tcp_listeners(0, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(send, listeners)


async def closed_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on (bound, then released): a
    refused target, or a free port for a process to take."""
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    await sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port
