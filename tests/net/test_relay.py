"""The relay: bytes both ways, in order, counted; what came with a handshake first."""

from __future__ import annotations

import trio
import trio.testing

from vtrio.config.model import LevelPolicy
from vtrio.net.relay import Traffic, relay
from vtrio.net.transport.buffered import BufferedStream


async def test_bytes_left_from_the_handshake_go_first_and_are_counted() -> None:
    client_side, client = trio.testing.memory_stream_pair()
    target, target_side = trio.testing.memory_stream_pair()
    await client_side.send_all(b"\x05\x01\x00" + b"early ")
    buffered = BufferedStream(client)
    assert await buffered.receive_exactly(3) == b"\x05\x01\x00"
    assert buffered.buffered == len(b"early ")
    traffic = Traffic()
    received = bytearray()

    async def target_echo() -> None:
        while data := await target_side.receive_some():
            received.extend(data)
            await target_side.send_all(data.upper())
        await target_side.send_eof()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(target_echo)
            nursery.start_soon(relay, buffered, target, LevelPolicy(), traffic)
            await client_side.send_all(b"late")
            await client_side.send_eof()
            back = bytearray()
            while data := await client_side.receive_some():
                back.extend(data)
    assert bytes(received) == b"early late"
    assert bytes(back) == b"EARLY LATE"
    assert (traffic.up, traffic.down) == (10, 10)
