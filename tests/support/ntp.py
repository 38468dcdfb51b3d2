"""A loopback NTP server whose clock runs ``offset`` seconds from ours."""

from __future__ import annotations

import socket
import time

import trio

from vtrio.protocol import sntp


def reply_to(request: bytes, offset: float, *, stratum: int = 2) -> bytes:
    """The server packet answering ``request`` (its transmit timestamp echoed)."""
    now = sntp.ntp_timestamp(time.time() + offset)
    head = bytes((0b00_100_100, stratum, 6, 0xEC)) + bytes(20)
    return head + request[40:48] + now + now


async def serve_ntp(
    offset: float,
    *,
    answer: bool = True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer SNTP requests on 127.0.0.1 (port 0, reported); with
    ``answer`` False, read them and stay silent."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            request, peer = await sock.recvfrom(1024)
            if answer:
                await sock.sendto(reply_to(request, offset), peer)
