"""JSON with comments: ``//``, ``/* */`` and ``#``, as v2ray's reader accepts.

Theory of operation: comments are overwritten with spaces byte for byte, and
the newlines inside them are kept, so every byte offset (and so every line and
column a JSON error reports) is the same in the stripped text as in the file.
Text inside strings, escapes included, is never touched.
"""

from __future__ import annotations

_SPACE = 0x20
_NEWLINE = 0x0A


def strip_comments(data: bytes) -> bytes:
    """The same bytes with every comment blanked out.

    Args:
        data: the file's bytes.

    Returns:
        Bytes of the same length, valid JSON where the file was JSON plus
        comments.
    """
    out = bytearray(data)
    i, n = 0, len(data)
    in_string = False
    while i < n:
        c = data[i]
        if in_string:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 2
                continue
            if c == 0x22:
                in_string = False
            i += 1
            continue
        if c == 0x22:
            in_string = True
            i += 1
            continue
        if c == 0x23 or (c == 0x2F and data[i + 1 : i + 2] == b"/"):
            end = data.find(b"\n", i)
            end = n if end < 0 else end
            out[i:end] = bytes([_SPACE]) * (end - i)
            i = end
            continue
        if c == 0x2F and data[i + 1 : i + 2] == b"*":
            end = data.find(b"*/", i + 2)
            end = n if end < 0 else end + 2
            out[i:end] = bytes(
                _NEWLINE if b == _NEWLINE else _SPACE for b in data[i:end]
            )
            i = end
            continue
        i += 1
    return bytes(out)


def line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of a byte offset."""
    offset = max(0, min(offset, len(data)))
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column
