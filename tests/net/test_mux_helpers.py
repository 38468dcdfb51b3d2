"""A Mux.Cool client written with the frame codec, for the serve_mux tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtrio.protocol.events import NEED_DATA
from vtrio.protocol.mux import Frame, MuxDecoder, encode_frame

if TYPE_CHECKING:
    import trio


class MuxClient:
    """The client end of a Mux stream: whole frames out, whole frames in."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = MuxDecoder()

    async def send(self, *frames: Frame) -> None:
        await self.stream.send_all(b"".join(encode_frame(f) for f in frames))

    async def receive(self) -> Frame:
        while (frame := self.decoder.next_frame()) is NEED_DATA:
            self.decoder.receive_data(await self.stream.receive_some(65536))
        assert isinstance(frame, Frame), "the Mux stream ended"
        return frame
