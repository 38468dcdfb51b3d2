"""Writing to a stream that several tunnels share (a Mux or gRPC connection)."""

from __future__ import annotations

import trio

# How long a write to a shared connection may wait for the peer to read.
SHARED_WRITE_STALL = 60.0


async def write_shared(stream: trio.abc.Stream, data: bytes | bytearray) -> None:
    """Write to a stream that several sub-sessions share, whole or not at all.

    A VMess stream seals a chunk (its nonce and length mask drawn) before the
    write: a sub-session cancelled in between (its destination closed, its
    client ended it) would leave the peer's decoder one chunk behind, reading
    a length from the wrong mask and waiting for it forever, which stops
    every sub-session on the connection. So the write is shielded; a peer
    that reads nothing for ``SHARED_WRITE_STALL`` seconds breaks the
    connection instead.

    Raises:
        trio.BrokenResourceError: the stream broke, or stalled (and is closed).
    """
    with trio.move_on_after(SHARED_WRITE_STALL, shield=True) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)
        raise trio.BrokenResourceError("the shared connection stalled")
