"""Mux.Cool and XUDP frames inside a VMess body stream (spec section 7).

Theory of operation: a ``Cmd = 3`` request carries no destination; its
decrypted body is a byte stream of frames, and frame boundaries have nothing to
do with chunk boundaries. :class:`MuxDecoder` therefore buffers whatever the
runtime feeds it and hands out whole :class:`Frame` values, like h11's
``receive_data`` / ``next_event``. :func:`encode_frame` is the other direction.

A frame is ``BE16 MetaLen | Meta | [BE16 DataLen | Data]``, the data part being
present iff the Data option bit is set. Meta is ``BE16 SessionID | Status |
Option | Extra``. Extra depends on the status:

* New: ``Network | BE16 Port | ATyp | Addr`` (VMess address codes, port first),
  and for XUDP an optional 8-byte GlobalID after the address (Xray adds it,
  sing-box does not).
* Keep: empty, or, for XUDP packets, ``0x02 (UDP) | BE16 Port | ATyp | Addr``,
  the packet's destination (client to server) or source (server to client).
* End and KeepAlive: nothing; any extra is ignored like v2ray does.

Memory is bounded by construction: MetaLen is refused above 512 and DataLen is
16 bits, so an incomplete frame never needs more than :data:`MAX_FRAME_SIZE`
buffered bytes. The decoder only consumes whole frames, so a frame split at any
byte decodes to the same value.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.address import Address, pack_address, unpack_address
from vtrio.protocol.events import NEED_DATA, NeedData

MAX_META_LENGTH = 512
MAX_DATA_LENGTH = 0xFFFF
MAX_FRAME_SIZE = 2 + MAX_META_LENGTH + 2 + MAX_DATA_LENGTH
# v2ray splits stream data into frames of at most 8 KiB (spec 7).
MAX_STREAM_FRAME_DATA = 8192
GLOBAL_ID_LENGTH = 8

OPTION_DATA = 0x01
OPTION_ERROR = 0x02

_META_FIXED = struct.Struct(">HBB")


class Status(enum.IntEnum):
    """What a frame does to its sub-session."""

    NEW = 0x01
    KEEP = 0x02
    END = 0x03
    KEEP_ALIVE = 0x04


class Network(enum.IntEnum):
    """The transport of a sub-session, named in New (and XUDP Keep) frames."""

    TCP = 0x01
    UDP = 0x02


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One Mux.Cool frame.

    ``data`` is None when the Data option is clear, and may be ``b""`` when it
    is set with a zero length. ``network``, ``address`` and ``port`` are set on
    New frames, and on XUDP Keep frames (network UDP) that name a packet
    address. ``global_id`` is the 8-byte XUDP GlobalID of a New frame, if any.
    """

    session_id: int
    status: Status
    data: bytes | None = None
    error: bool = False
    network: Network | None = None
    address: Address | None = None
    port: int = 0
    global_id: bytes | None = None


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of one frame.

    Raises:
        LocalProtocolError: a field does not fit or does not belong to the status.
    """
    if not 0 <= frame.session_id <= 0xFFFF or not 0 <= frame.port <= 0xFFFF:
        raise LocalProtocolError("session id or port out of range")
    option = (OPTION_DATA if frame.data is not None else 0) | (
        OPTION_ERROR if frame.error else 0
    )
    meta = _META_FIXED.pack(frame.session_id, frame.status, option)
    has_target = frame.network is not None or frame.address is not None
    if frame.status is Status.NEW and not has_target:
        raise LocalProtocolError("a New frame needs a network and a destination")
    if has_target:
        meta += _pack_target(frame)
    elif frame.global_id is not None:
        raise LocalProtocolError("a GlobalID belongs to a UDP New frame")
    if len(meta) > MAX_META_LENGTH:
        raise LocalProtocolError("frame metadata longer than 512 bytes")
    parts = [struct.pack(">H", len(meta)), meta]
    if frame.data is not None:
        if len(frame.data) > MAX_DATA_LENGTH:
            raise LocalProtocolError("frame data longer than 65535 bytes")
        parts += (struct.pack(">H", len(frame.data)), frame.data)
    return b"".join(parts)


def _pack_target(frame: Frame) -> bytes:
    """Extra of a New frame or of an addressed XUDP Keep frame."""
    if frame.network is None or frame.address is None:
        raise LocalProtocolError("a frame target needs both network and address")
    if frame.status is Status.KEEP and frame.network is not Network.UDP:
        raise LocalProtocolError("only UDP Keep frames carry a packet address")
    if frame.status not in (Status.NEW, Status.KEEP):
        raise LocalProtocolError(f"{frame.status.name} frames carry no target")
    extra = bytes((frame.network,)) + struct.pack(">H", frame.port)
    extra += pack_address(frame.address)
    if frame.global_id is not None:
        if frame.status is not Status.NEW or frame.network is not Network.UDP:
            raise LocalProtocolError("a GlobalID belongs to a UDP New frame")
        if len(frame.global_id) != GLOBAL_ID_LENGTH:
            raise LocalProtocolError("a GlobalID is 8 bytes")
        extra += frame.global_id
    return extra


def stream_frames(session_id: int, data: bytes | bytearray) -> list[bytes]:
    """Keep frames carrying ``data`` in pieces of at most 8 KiB (spec 7)."""
    return [
        encode_frame(
            Frame(
                session_id,
                Status.KEEP,
                bytes(data[start : start + MAX_STREAM_FRAME_DATA]),
            )
        )
        for start in range(0, len(data), MAX_STREAM_FRAME_DATA)
    ]


def decode_meta(meta: bytes) -> tuple[Frame, bool]:
    """The frame described by ``meta`` (without its data), and its Data bit.

    Raises:
        RemoteProtocolError: too short, unknown status or network, bad address.
    """
    if len(meta) < _META_FIXED.size:
        raise RemoteProtocolError(f"mux metadata of {len(meta)} bytes is too short")
    session_id, raw_status, option = _META_FIXED.unpack_from(meta)
    try:
        status = Status(raw_status)
    except ValueError:
        raise RemoteProtocolError(f"unknown mux frame status {raw_status}") from None
    error = bool(option & OPTION_ERROR)
    has_data = bool(option & OPTION_DATA)
    extra = meta[_META_FIXED.size :]
    # Keep frames name a packet address only when their extra starts with UDP,
    # as Xray and sing-box read it; other statuses' extra is ignored (v2ray).
    addressed_keep = status is Status.KEEP and extra[:1] == bytes((Network.UDP,))
    if status is not Status.NEW and not addressed_keep:
        return Frame(session_id, status, error=error), has_data
    if len(extra) < 4:
        raise RemoteProtocolError("mux frame target is truncated")
    try:
        network = Network(extra[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown mux network {extra[0]}") from None
    (port,) = struct.unpack_from(">H", extra, 1)
    address, end = unpack_address(extra, 3)
    global_id = None
    # Xray appends the GlobalID to UDP New frames; anything else is ignored.
    if status is Status.NEW and network is Network.UDP:
        trailer = extra[end:]
        global_id = trailer if len(trailer) == GLOBAL_ID_LENGTH else None
    frame = Frame(session_id, status, None, error, network, address, port, global_id)
    return frame, has_data


class MuxDecoder:
    """Turns the decrypted body byte stream into frames.

    Feed bytes with :meth:`receive_data` (``b""`` is EOF) and call
    :meth:`next_frame` until it returns :data:`NEED_DATA`. Feed more only then,
    so that at most one partial frame plus one read is ever buffered.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; ``b""`` means the body stream ended.

        Raises:
            LocalProtocolError: data after EOF.
        """
        if self._eof:
            raise LocalProtocolError("mux data received after EOF")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_frame(self) -> Frame | NeedData | None:
        """The next whole frame, None at a clean EOF, or NEED_DATA.

        Raises:
            RemoteProtocolError: invalid metadata, or EOF inside a frame.
        """
        frame = self._parse()
        if frame is not NEED_DATA:
            return frame
        if not self._eof:
            return NEED_DATA
        if self._buffer:
            raise RemoteProtocolError("mux stream ended inside a frame")
        return None

    def _parse(self) -> Frame | NeedData:
        buffer = self._buffer
        if len(buffer) < 2:
            return NEED_DATA
        (meta_length,) = struct.unpack_from(">H", buffer)
        if meta_length > MAX_META_LENGTH:
            raise RemoteProtocolError(f"mux metadata length {meta_length} > 512")
        meta_end = 2 + meta_length
        if len(buffer) < meta_end:
            return NEED_DATA
        # Validate the metadata as soon as it is complete, before waiting for
        # data, so garbage fails fast instead of waiting for 64 KiB.
        frame, has_data = decode_meta(bytes(buffer[2:meta_end]))
        if not has_data:
            del buffer[:meta_end]
            return frame
        if len(buffer) < meta_end + 2:
            return NEED_DATA
        (data_length,) = struct.unpack_from(">H", buffer, meta_end)
        frame_end = meta_end + 2 + data_length
        if len(buffer) < frame_end:
            return NEED_DATA
        data = bytes(buffer[meta_end + 2 : frame_end])
        del buffer[:frame_end]
        return dataclasses.replace(frame, data=data)
