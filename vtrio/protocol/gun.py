"""The "gun" framing of v2ray's gRPC transport: tunnel bytes as gRPC messages.

Theory of operation: each write is one gRPC message (a zero compression flag,
a 4-byte big-endian length) holding a protobuf ``Hunk``: field 1, bytes.
Xray's multi mode sends a ``MultiHunk`` (field 1, repeated bytes), which is
the same bytes for one entry, so the decoder reads every field-1 entry of a
message and skips other fields, whichever service the path named. The
request path is ``/<serviceName>/Tun`` (``TunMulti`` in multi mode), or the
name itself when it starts with ``/`` (Xray's custom paths).
"""

from __future__ import annotations

from urllib.parse import quote

from vtrio.errors import RemoteProtocolError
from vtrio.protocol import protobuf

# What one gRPC message may hold (grpc-go's default receive limit).
MAX_MESSAGE = 4 * 1024 * 1024
_HUNK_TAG = 0x0A  # field 1, length-delimited
_MESSAGE_HEAD = 5


def hunk_head(length: int) -> bytes:
    """What goes before ``length`` bytes of payload to make them one gRPC
    message (written apart, the payload is not copied)."""
    field = bytes((_HUNK_TAG,)) + protobuf.encode_varint(length)
    return b"\x00" + (len(field) + length).to_bytes(4, "big") + field


def hunk_payloads(message: bytes | memoryview) -> list[bytes]:
    """The bytes of every field-1 entry of a Hunk or MultiHunk."""
    view = memoryview(message)
    try:
        if view and view[0] == _HUNK_TAG:  # the usual shape: one Hunk, read at once
            length, start = protobuf.read_varint(view, 1)
            if start + length == len(view):
                return [bytes(view[start:])]
        return [
            bytes(value)
            for number, value in protobuf.fields(view)
            if number == 1 and not isinstance(value, int)
        ]
    except protobuf.ProtobufError as exc:
        raise RemoteProtocolError(f"gRPC: {exc}") from exc


class HunkDecoder:
    """gRPC messages from a byte stream, to the tunnel bytes they carry."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The payloads of every message completed by ``data``.

        Raises:
            RemoteProtocolError: a compressed or oversized message, or one
                that is not a Hunk.
        """
        if self._buffer:
            self._buffer += data
            data = self._buffer
        payloads: list[bytes] = []
        offset = 0
        with memoryview(data) as view:  # messages read in place, each copied once
            while len(view) - offset >= _MESSAGE_HEAD:
                if view[offset]:
                    raise RemoteProtocolError("gRPC: compressed message (none agreed)")
                length = int.from_bytes(view[offset + 1 : offset + _MESSAGE_HEAD])
                if length > MAX_MESSAGE:
                    raise RemoteProtocolError(
                        f"gRPC: a {length}-byte message is too large"
                    )
                end = offset + _MESSAGE_HEAD + length
                if end > len(view):
                    break
                payloads += hunk_payloads(view[offset + _MESSAGE_HEAD : end])
                offset = end
            self._buffer = bytearray(view[offset:])
        return [payload for payload in payloads if payload]

    @property
    def pending(self) -> bool:
        """Part of a message is waiting for the rest."""
        return bool(self._buffer)


def service_path(service_name: str, *, multi: bool = False) -> str:
    """The request path for a ``serviceName``.

    A plain name gives ``/<name>/Tun`` (``/TunMulti`` in multi mode). Xray's
    custom form starts with ``/``: its last segment names the Tun method, and
    on a server ``/a/b/tun|multi`` names both (a client's one name serves
    both modes).
    """
    if not service_name.startswith("/"):
        return f"/{_escape(service_name)}/{'TunMulti' if multi else 'Tun'}"
    head, _, ending = service_name.rpartition("/")
    tun, _, tun_multi = ending.partition("|")
    name = (tun_multi or tun) if multi else tun
    segments = [_escape(segment) for segment in head[1:].split("/") if segment]
    return "/" + "/".join([*segments, _escape(name)])


def _escape(segment: str) -> str:
    # As Go's url.PathEscape.
    return quote(segment, safe="$&+,:;=@")
