"""connect_tcp: IP literals take one socket connect, names take trio's dialer."""

from __future__ import annotations

import socket

import pytest
import trio

from vtrio.net.transport import connect_tcp
from vtrio.net.transport.tcp import TCPStream


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "localhost"),
        pytest.param(
            "::1",
            "::1",
            marks=pytest.mark.skipif(
                not _has_ipv6_loopback(), reason="no IPv6 loopback"
            ),
        ),
    ],
)
async def test_connects_and_carries_bytes(listen: str, dial: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host=listen)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def echo(stream: trio.SocketStream) -> None:
            async with stream:
                await stream.send_all(await stream.receive_some(100))

        nursery.start_soon(trio.serve_listeners, echo, listeners)
        stream = await connect_tcp(dial, port)
        async with stream:
            # Names (trio's dialer) and literals end in the same stream type.
            assert isinstance(stream, TCPStream)
            assert stream.socket.family == (
                socket.AF_INET6 if ":" in listen else socket.AF_INET
            )
            await stream.send_all(b"round trip")
            assert await stream.receive_some(100) == b"round trip"
        nursery.cancel_scope.cancel()


async def test_a_refused_literal_raises_oserror() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(OSError, match=r"refused"):
        await connect_tcp("127.0.0.1", port)
