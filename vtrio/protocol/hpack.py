"""HPACK (RFC 7541): the header compression of HTTP/2.

Theory of operation: the decoder reads every representation a peer may send
(indexed fields, literals with and without indexing, table size updates) and
Huffman-coded strings, and keeps the peer's dynamic table, because Go's
HTTP/2 encoder uses all of them. The encoder never adds to the peer's table
and never Huffman-codes: a literal "without indexing" (with the static
table's name index where there is one) is always valid and costs the peer
no state. Both are sans-IO: bytes in, header lists out, and the reverse.
"""

from __future__ import annotations

from vtrio.errors import RemoteProtocolError

Header = tuple[bytes, bytes]

# Appendix A.
STATIC_TABLE: tuple[Header, ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)
_STATIC_FIELD_INDEX = {field: i + 1 for i, field in enumerate(STATIC_TABLE)}
_STATIC_NAME_INDEX: dict[bytes, int] = {}
for _i, (_name, _) in enumerate(STATIC_TABLE):
    _STATIC_NAME_INDEX.setdefault(_name, _i + 1)

# Appendix B: the bit length of each symbol's code (256 is EOS). The code is
# canonical (codes of one length are consecutive, in symbol order, after the
# shorter ones), so the lengths define it.
_CODE_LENGTHS = (
    [13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28]
    + [28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28]
    + [6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6]  # ' ' to '/'
    + [5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10]  # '0' to '?'
    + [13, 6]
    + [7] * 22
    + [8, 7, 8, 13, 19, 13, 14, 6]  # '@' to '_'
    + [15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5]  # '`' to 'o'
    + [6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28]  # 'p' to DEL
    + [20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23]
    + [24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24]
    + [22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23]
    + [21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23]
    + [26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25]
    + [19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27]
    + [20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23]
    + [26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26]
    + [30]
)
EOS = 256


def _canonical_codes(lengths: list[int]) -> list[int]:
    codes = [0] * len(lengths)
    code, previous = 0, 0
    for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        code <<= lengths[symbol] - previous
        previous = lengths[symbol]
        codes[symbol] = code
        code += 1
    return codes


HUFFMAN_CODES = _canonical_codes(_CODE_LENGTHS)
# For decoding: per code length, the first code and the symbols in code order.
_MIN_LENGTH, _MAX_LENGTH = min(_CODE_LENGTHS), max(_CODE_LENGTHS)
_FIRST_CODE: dict[int, int] = {}
_SYMBOLS: dict[int, list[int]] = {}
for _symbol in sorted(range(EOS + 1), key=lambda s: (_CODE_LENGTHS[s], s)):
    _length = _CODE_LENGTHS[_symbol]
    _FIRST_CODE.setdefault(_length, HUFFMAN_CODES[_symbol])
    _SYMBOLS.setdefault(_length, []).append(_symbol)

# What one decoded header list may add up to (names, values, 32 per field as
# RFC 7541 counts them), against header bombs.
MAX_HEADER_LIST_SIZE = 65536
DEFAULT_TABLE_SIZE = 4096
_ENTRY_OVERHEAD = 32


def huffman_encode(data: bytes) -> bytes:
    """``data`` Huffman-coded, padded with the EOS prefix (1 bits)."""
    value, bits = 0, 0
    for byte in data:
        value = value << _CODE_LENGTHS[byte] | HUFFMAN_CODES[byte]
        bits += _CODE_LENGTHS[byte]
    padding = -bits % 8
    value = value << padding | (1 << padding) - 1
    return value.to_bytes((bits + padding) // 8, "big")


def huffman_decode(data: bytes | memoryview) -> bytes:
    """Decode a Huffman-coded string (section 5.2).

    Raises:
        RemoteProtocolError: EOS in the string, or padding that is longer
            than 7 bits or not all 1s.
    """
    total = len(data) * 8
    bits = format(int.from_bytes(data, "big"), f"0{total}b") if data else ""
    out = bytearray()
    position = 0
    while total - position >= _MIN_LENGTH:
        for length in range(_MIN_LENGTH, min(_MAX_LENGTH, total - position) + 1):
            first = _FIRST_CODE.get(length)
            if first is None:
                continue
            offset = int(bits[position : position + length], 2) - first
            symbols = _SYMBOLS[length]
            if 0 <= offset < len(symbols):
                symbol = symbols[offset]
                if symbol == EOS:
                    raise RemoteProtocolError("HPACK: EOS inside a Huffman string")
                out.append(symbol)
                position += length
                break
        else:
            break  # what is left is no whole code: the padding
    rest = bits[position:]
    if len(rest) > 7 or rest.count("0"):
        raise RemoteProtocolError("HPACK: bad Huffman padding")
    return bytes(out)


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An integer with an N-bit prefix (section 5.1); ``first`` carries the
    representation's flag bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_integer(data: memoryview, offset: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    try:
        value = data[offset] & limit
        offset += 1
        if value < limit:
            return value, offset
        shift = 0
        while True:
            byte = data[offset]
            offset += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, offset
            if shift > 28:
                raise RemoteProtocolError("HPACK: integer too large")
    except IndexError:
        raise RemoteProtocolError("HPACK: truncated integer") from None


def _encode_string(value: bytes) -> bytes:
    return encode_integer(len(value), 7) + value


class Decoder:
    """The decoding side of one HTTP/2 connection (the peer's encoder's
    dynamic table lives here)."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        # The most the peer may set the table to (our SETTINGS_HEADER_TABLE_SIZE).
        self._limit = max_table_size
        self._max_size = max_table_size
        self._table: list[Header] = []  # newest first
        self._size = 0

    def decode(self, block: bytes | bytearray | memoryview) -> list[Header]:
        """The header list of one complete header block.

        Raises:
            RemoteProtocolError: malformed (a compression error, which ends the
                connection), or larger than ``MAX_HEADER_LIST_SIZE``.
        """
        data = memoryview(block)
        headers: list[Header] = []
        listed = 0
        offset = 0
        while offset < len(data):
            first = data[offset]
            if first & 0x80:  # indexed field
                index, offset = _decode_integer(data, offset, 7)
                header = self._field(index)
            elif first & 0x40:  # literal with incremental indexing
                header, offset = self._literal(data, offset, 6)
                self._add(header)
            elif first & 0x20:  # dynamic table size update
                size, offset = _decode_integer(data, offset, 5)
                if size > self._limit or headers:
                    raise RemoteProtocolError("HPACK: bad table size update")
                self._max_size = size
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                header, offset = self._literal(data, offset, 4)
            listed += len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
            if listed > MAX_HEADER_LIST_SIZE:
                raise RemoteProtocolError("HPACK: header list too large")
            headers.append(header)
        return headers

    def _field(self, index: int) -> Header:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self._table):
            return self._table[dynamic]
        raise RemoteProtocolError(f"HPACK: no table entry {index}")

    def _literal(
        self, data: memoryview, offset: int, prefix_bits: int
    ) -> tuple[Header, int]:
        index, offset = _decode_integer(data, offset, prefix_bits)
        if index:
            name = self._field(index)[0]
        else:
            name, offset = self._string(data, offset)
        value, offset = self._string(data, offset)
        return (name, value), offset

    def _string(self, data: memoryview, offset: int) -> tuple[bytes, int]:
        if offset >= len(data):
            raise RemoteProtocolError("HPACK: truncated string")
        huffman = data[offset] & 0x80
        length, offset = _decode_integer(data, offset, 7)
        end = offset + length
        if end > len(data):
            raise RemoteProtocolError("HPACK: truncated string")
        raw = data[offset:end]
        return (huffman_decode(raw) if huffman else bytes(raw)), end

    def _add(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
        if size > self._max_size:  # too large: the table just empties
            self._table.clear()
            self._size = 0
            return
        self._table.insert(0, header)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def encode(headers: list[Header]) -> bytes:
    """A header block the peer can decode without changing its table: exact
    static matches indexed, the rest literals without indexing."""
    out = bytearray()
    for name, value in headers:
        index = _STATIC_FIELD_INDEX.get((name, value))
        if index is not None:
            out += encode_integer(index, 7, 0x80)
            continue
        name_index = _STATIC_NAME_INDEX.get(name, 0)
        out += encode_integer(name_index, 4)
        if not name_index:
            out += _encode_string(name)
        out += _encode_string(value)
    return bytes(out)
