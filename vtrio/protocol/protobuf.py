"""Protocol buffers' wire format, without a schema: the fields of a message
(v2ray's geodata files, gRPC tunnel messages) and the varint that prefixes
a length."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LENGTH = 2
WIRE_FIXED32 = 5


class ProtobufError(ValueError):
    """Bytes that are not a well-formed message."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    """The varint at ``offset`` and the offset past it."""
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ProtobufError("a truncated number")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """The (field number, value) pairs of one message: varints as ints,
    length-delimited fields as views; fixed-size fields are skipped."""
    offset, end = 0, len(data)
    while offset < end:
        key, offset = read_varint(data, offset)
        number, wire = key >> 3, key & 7
        if wire == WIRE_VARINT:
            value, offset = read_varint(data, offset)
            yield number, value
        elif wire == WIRE_LENGTH:
            size, offset = read_varint(data, offset)
            if offset + size > end:
                raise ProtobufError("a field runs past the end of its message")
            yield number, data[offset : offset + size]
            offset += size
        elif wire in (WIRE_FIXED64, WIRE_FIXED32):
            offset += 8 if wire == WIRE_FIXED64 else 4
            if offset > end:
                raise ProtobufError("a field runs past the end of its message")
        else:
            raise ProtobufError(f"unknown wire type {wire}")
