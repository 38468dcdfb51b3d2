"""Writes to a stream several Mux sub-sessions share: whole, even when the
writer is cancelled, and never stuck for good."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from vtrio.net.transport import shared
from vtrio.net.transport.shared import write_shared


async def test_a_cancelled_writer_still_writes_the_whole_frame() -> None:
    writer, reader = trio.testing.lockstep_stream_pair()
    received = bytearray()
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            await trio.sleep(0.05)
            with trio.move_on_after(1):
                while len(received) < 5:
                    received.extend(await reader.receive_some(10))

        nursery.start_soon(read)
        with trio.CancelScope() as scope:
            scope.cancel()  # the sub-session ends while its frame is going out
            await write_shared(writer, b"frame")
            await trio.sleep(1)  # the next checkpoint takes the cancellation
    assert scope.cancelled_caught
    assert bytes(received) == b"frame"


async def test_a_peer_that_reads_nothing_breaks_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared, "SHARED_WRITE_STALL", 0.1)
    writer, reader = trio.testing.lockstep_stream_pair()
    with pytest.raises(trio.BrokenResourceError, match="stalled"):
        await write_shared(writer, b"never read")
    with pytest.raises(trio.ClosedResourceError):
        await writer.send_all(b"more")  # closed with the stall
    await reader.aclose()
