"""The body codec: one direction of chunks for every security (spec 6).

Theory of operation: the framing follows the ``Opt`` byte and the command, not
just the security nibble (v2ray ``zero`` sends Sec 5 with Opt 0, sing's TCP
``none`` too). :class:`Framing` works out, once per connection, what a chunk
looks like in each case:

=====================  ========  =======  ==============================
security               overhead  padding  length field
=====================  ========  =======  ==============================
GCM / ChaCha           16 (tag)  Opt      2 masked, or 18 sealed (AuthLen)
legacy CFB, chunked    4 (FNV)   Opt      2 masked, all inside the CFB
none, chunked, TCP     0         never    2 masked (v2ray writes no pad)
none, chunked, UDP     0         Opt      2 masked
not chunked            --        --       raw bytes (CFB for legacy)
=====================  ========  =======  ==============================

``Size`` (the length field's value) counts the sealed payload and the
padding. Per chunk the SHAKE128 stream of the direction gives the padding
length first, then the mask, both 2 bytes; one ``read(4)`` gives both. An
empty payload ends the direction, as does a clean EOF at a chunk boundary; EOF
inside a chunk is an error. The AEAD nonce is ``BE16(count) | IV[2:12]`` and
the count wraps at 65536 like upstream's uint16. Keys, cipher objects and the
XOF are made once per direction; a chunk costs one seal or open.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, Unpack

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.ciphers import aes_128_cfb, aes_128_gcm, chacha20_poly1305, shake128
from vtrio.protocol.ids import chacha_key
from vtrio.protocol.instruction import Option, SecurityType, fnv1a32
from vtrio.protocol.kdf import kdf16

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.protocol.ciphers import AEAD, Buffer, StreamCipher

MAX_PADDING = 63
TAG_LENGTH = 16
# The most plaintext per written chunk: with its tag and the largest padding a
# chunk's Size stays within 16384, the most sing-box reads (spec 6.9); v2ray
# and Xray read any 16-bit size. Fewer, larger chunks mean fewer seals per byte.
MAX_CHUNK_PAYLOAD = 16384 - TAG_LENGTH - MAX_PADDING
FNV_LENGTH = 4
SEALED_LENGTH_FIELD = 2 + TAG_LENGTH
# The largest datagram whose chunk stays within 16384 bytes in every framing.
MAX_DATAGRAM = 16384 - SEALED_LENGTH_FIELD - TAG_LENGTH - MAX_PADDING
AUTH_LENGTH_SALT = b"auth_len"


class End(enum.Enum):
    """Type of :data:`END`: what a decoder returns when the direction ended."""

    END = enum.auto()


END = End.END


@dataclass(frozen=True, slots=True)
class Framing:
    """How one connection's chunks look; the same for both directions."""

    security: SecurityType
    chunked: bool
    overhead: int
    padding: bool
    masking: bool
    authenticated_length: bool

    @classmethod
    @functools.lru_cache(maxsize=256)  # one per (security, options, command) seen
    def of(cls, security: SecurityType, options: Option, *, datagram: bool) -> Framing:
        """The framing for a request's security, options and command.

        Raises:
            RemoteProtocolError: padding without masking (v2ray: "invalid option").
        """
        aead = security in (SecurityType.AES_128_GCM, SecurityType.CHACHA20_POLY1305)
        chunked = aead or Option.CHUNK_STREAM in options
        masking = Option.CHUNK_MASKING in options
        padding = Option.GLOBAL_PADDING in options and chunked
        if security is SecurityType.NONE and not datagram:
            padding = False  # v2ray's plain chunk writer has no padding
        authenticated_length = aead and Option.AUTHENTICATED_LENGTH in options
        if padding and not masking:
            raise RemoteProtocolError(
                "invalid option: GlobalPadding without ChunkMasking"
            )
        overhead = {SecurityType.LEGACY: FNV_LENGTH, SecurityType.NONE: 0}.get(
            security, TAG_LENGTH
        )
        return cls(
            security,
            chunked,
            overhead,
            padding,
            masking and not authenticated_length,
            authenticated_length,
        )

    @property
    def length_field(self) -> int:
        """Bytes of the length field: 2, or 18 when the length is sealed."""
        return SEALED_LENGTH_FIELD if self.authenticated_length else 2


class DirectionKeys(TypedDict):
    """The keys of one direction.

    ``key``/``iv`` are this direction's body key and IV (ReqKey/ReqIV or
    RespKey/RespIV); ``request_key``/``request_iv`` are the request's, for the
    authenticated length, which both directions take from the request (6.1).
    """

    key: bytes
    iv: bytes
    request_key: bytes
    request_iv: bytes


class _Direction:
    """Cipher state of one direction, shared by the encoder and the decoder."""

    def __init__(
        self,
        framing: Framing,
        *,
        stream_cipher: StreamCipher | None = None,
        **keys: Unpack[DirectionKeys],
    ) -> None:
        """Args:
        framing: the connection's framing.
        stream_cipher: legacy only, a CFB stream to continue (the legacy
            response header's); by default a fresh one over key and iv.
        keys: see :class:`DirectionKeys`.
        """
        key, iv = keys["key"], keys["iv"]
        request_key, request_iv = keys["request_key"], keys["request_iv"]
        self.framing = framing
        self._xof = shake128(iv) if framing.padding or framing.masking else None
        self._draw = 2 * (framing.padding + framing.masking)
        self._nonce_tail = iv[2:12]
        self._count = 0
        self._length_count = 0
        self._length_nonce_tail = request_iv[2:12]
        self._aead: AEAD | None = None
        self._length_aead: AEAD | None = None
        self._cfb: StreamCipher | None = None
        if framing.security is SecurityType.LEGACY:
            self._cfb = (
                stream_cipher if stream_cipher is not None else aes_128_cfb(key, iv)
            )
        elif framing.security is not SecurityType.NONE:
            self._aead = _aead(framing.security, key)
            if framing.authenticated_length:
                self._length_aead = _aead(
                    framing.security, kdf16(request_key, AUTH_LENGTH_SALT)
                )

    def _next_padding_and_mask(self) -> tuple[int, int]:
        """The next chunk's padding length and length mask, in wire order:
        the padding's 2 XOF bytes, then the mask's."""
        if self._xof is None:
            return 0, 0
        value = int.from_bytes(self._xof.read(self._draw))
        if self._draw == 4:
            return (value >> 16) % 64, value & 0xFFFF
        return (value % 64, 0) if self.framing.padding else (0, value)

    def _nonce(self) -> bytes:
        nonce = self._count.to_bytes(2) + self._nonce_tail
        self._count = (self._count + 1) & 0xFFFF
        return nonce

    def _length_nonce(self) -> bytes:
        nonce = self._length_count.to_bytes(2) + self._length_nonce_tail
        self._length_count = (self._length_count + 1) & 0xFFFF
        return nonce


def _aead(security: SecurityType, key: bytes) -> AEAD:
    if security is SecurityType.AES_128_GCM:
        return aes_128_gcm(key)
    return chacha20_poly1305(chacha_key(key))


class ChunkEncoder(_Direction):
    """Encodes one direction's payload into wire bytes."""

    def __init__(
        self,
        framing: Framing,
        *,
        random: Callable[[int], bytes],
        stream_cipher: StreamCipher | None = None,
        **keys: Unpack[DirectionKeys],
    ) -> None:
        super().__init__(framing, stream_cipher=stream_cipher, **keys)
        self._random = random

    def encode_stream(self, data: Buffer) -> bytes | bytearray:
        """Stream data as chunks of at most MAX_CHUNK_PAYLOAD bytes (b"" for b"")."""
        view = memoryview(data)
        if not self.framing.chunked:
            return self._encrypt(view)
        return self._chunks(
            [
                view[offset : offset + MAX_CHUNK_PAYLOAD]
                for offset in range(0, len(view), MAX_CHUNK_PAYLOAD)
            ]
        )

    def encode_datagram(self, payload: Buffer) -> bytes | bytearray:
        """One datagram as exactly one chunk.

        Raises:
            LocalProtocolError: empty (it would read as the end), or over
                :data:`MAX_DATAGRAM` bytes.
        """
        if not 0 < len(payload) <= MAX_DATAGRAM:
            raise LocalProtocolError(
                f"datagram size {len(payload)} not in 1..{MAX_DATAGRAM}"
            )
        if not self.framing.chunked:
            return self._encrypt(memoryview(payload))
        return self._chunks([memoryview(payload)])

    def encode_end(self) -> bytes | bytearray:
        """The empty chunk that ends the direction; b"" when not chunked."""
        return self._chunks([memoryview(b"")]) if self.framing.chunked else b""

    def _encrypt(self, view: memoryview) -> bytes:
        return self._cfb.encrypt(view) if self._cfb is not None else bytes(view)

    def _chunks(self, payloads: list[memoryview]) -> bytes | bytearray:
        """Every chunk of one write, sealed straight into one output buffer.

        Drawing every chunk's padding and mask first reads the XOF in the
        same order as drawing them chunk by chunk.
        """
        framing = self.framing
        field, overhead = framing.length_field, framing.overhead
        chunks = [(p, *self._next_padding_and_mask()) for p in payloads]
        out = bytearray(sum(field + len(p) + overhead + pad for p, pad, _ in chunks))
        view = memoryview(out)
        padding_bytes = memoryview(self._random(sum(pad for _, pad, _ in chunks)))
        position = taken = 0
        for payload, padding, mask in chunks:
            size = len(payload) + overhead + padding
            if self._length_aead is not None:
                self._length_aead.seal_into(
                    self._length_nonce(),
                    (size - TAG_LENGTH).to_bytes(2),
                    view[position : position + SEALED_LENGTH_FIELD],
                )
            else:
                struct.pack_into(">H", out, position, size ^ mask)
            position += field
            body_end = position + size - padding
            if self._aead is not None:
                self._aead.seal_into(self._nonce(), payload, view[position:body_end])
            elif self._cfb is not None:
                struct.pack_into(">I", out, position, fnv1a32(payload))
                view[position + FNV_LENGTH : body_end] = payload
            else:
                view[position:body_end] = payload
            position = body_end + padding
            if padding:
                view[body_end:position] = padding_bytes[taken : taken + padding]
                taken += padding
        view.release()
        return self._cfb.encrypt(out) if self._cfb is not None else out


class ChunkDecoder(_Direction):
    """Decodes one direction's wire bytes; owns its receive buffer."""

    def __init__(
        self,
        framing: Framing,
        *,
        stream_cipher: StreamCipher | None = None,
        **keys: Unpack[DirectionKeys],
    ) -> None:
        super().__init__(framing, stream_cipher=stream_cipher, **keys)
        # Received blocks not yet decoded, as they came: a chunk is opened
        # straight from its block, and only one that spans two blocks is
        # copied. _offset is how far the first block is decoded.
        # A list, not a deque: it holds one to three blocks, and an empty
        # deque costs 760 bytes per idle tunnel.
        self._segments: list[memoryview] = []
        self._offset = 0
        self._buffered = 0
        self._eof = False
        self._ended = False
        # (Size, padding) of a chunk whose length field was read but whose
        # body has not fully arrived: the XOF must not be drawn twice.
        self._pending: tuple[int, int] | None = None
        # A failure met after good chunks were decoded in the same call: those
        # are returned first and this is raised by the next call.
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        return self._buffered

    def feed(self, data: Buffer) -> None:
        """Add received bytes; ``b""`` means EOF. Bytes after the end are dropped."""
        if self._ended:
            return
        if not data:
            self._eof = True
            return
        if self._cfb is not None:
            data = self._cfb.decrypt(data)
        block = data if isinstance(data, bytes) else bytes(data)
        self._segments.append(memoryview(block))
        self._buffered += len(block)

    def _take(self, size: int) -> bytes | memoryview:
        """The next ``size`` buffered bytes (at most :attr:`buffered`)."""
        segments = self._segments
        first, start = segments[0], self._offset
        end = start + size
        self._buffered -= size
        if end < len(first):
            self._offset = end
            return first[start:end]
        if end == len(first):
            segments.pop(0)
            self._offset = 0
            return first[start:]
        parts = [first[start:]]
        segments.pop(0)
        missing = end - len(first)
        while missing and missing >= len(segments[0]):
            missing -= len(segments[0])
            parts.append(segments.pop(0))
        if missing:
            parts.append(segments[0][:missing])
        self._offset = missing
        return b"".join(parts)

    def next_payload(self, *, coalesce: bool = False) -> bytes | End | None:
        """The next chunk's plaintext, END, or None while more bytes are needed.

        Args:
            coalesce: return the plaintext of every complete chunk buffered,
                joined (streams); by default exactly one chunk (datagrams).

        Raises:
            RemoteProtocolError: a bad tag or FNV, a size smaller than its
                overhead, or EOF inside a chunk.
        """
        if self._failure is not None:
            raise RemoteProtocolError(self._failure)
        if self._ended:
            return END
        if not self.framing.chunked:
            if self._buffered:
                return bytes(self._take(self._buffered))
            return self._end() if self._eof else None
        payloads: list[bytes] = []
        try:
            ended = self._open_chunks(payloads, coalesce)
        except RemoteProtocolError as exc:
            if not payloads:
                raise
            self._failure = str(exc)
            ended = False
        if payloads:
            return payloads[0] if len(payloads) == 1 else b"".join(payloads)
        if ended:
            return self._end()  # upstream readers stop here, unread tag and all
        if self._eof:
            if self._pending is not None:
                raise RemoteProtocolError("EOF inside a chunk")
            if self._buffered:
                raise RemoteProtocolError("EOF inside a chunk length")
            return self._end()
        return None

    def _open_chunks(self, payloads: list[bytes], coalesce: bool) -> bool:
        """Open complete chunks into ``payloads``; stop at an incomplete one,
        or after one unless ``coalesce``. True at the end chunk."""
        field, overhead = self.framing.length_field, self.framing.overhead
        within_blocks = (
            coalesce and self._aead is not None and self._length_aead is None
        )
        while True:
            if within_blocks:
                # Again after each chunk that spanned two blocks.
                self._open_within_block(payloads)
            if self._pending is None:
                if self._buffered < field:
                    return False
                self._pending = self._read_size(self._take(field))
            size, padding = self._pending
            if size < overhead + padding:
                raise RemoteProtocolError(f"chunk size {size} below its overhead")
            if size == overhead + padding:
                return True
            if self._buffered < size:
                return False
            self._pending = None
            body = self._take(size)
            payloads.append(self._open(body[:-padding] if padding else body))
            if not coalesce:
                return False

    def _open_within_block(self, payloads: list[bytes]) -> None:
        """Open every AEAD chunk lying whole in the first received block.

        The common case (a 256 KiB read of a peer's 2-16 KiB chunks) costs
        one XOF read and one open per chunk here, without the general loop's
        calls per chunk, which cost more than opening a 2 KiB chunk. It stops
        at the first chunk that is incomplete, the end chunk or malformed,
        with the length already read kept in ``_pending``, so the general
        loop continues exactly where this one stopped.
        """
        if self._pending is not None or not self._segments:
            return
        assert self._aead is not None
        block, start = self._segments[0], self._offset
        offset, limit = start, len(self._segments[0])
        xof, draw = self._xof, self._draw
        minimum = self.framing.overhead
        open_chunk, tail, count = self._aead.open, self._nonce_tail, self._count
        padding = mask = 0
        try:
            while limit - offset >= 2:
                if xof is not None:
                    # Without AuthenticatedLength, padding comes with masking:
                    # 4 bytes are padding and mask, 2 bytes the mask alone.
                    value = int.from_bytes(xof.read(draw))
                    if draw == 4:
                        padding, mask = (value >> 16) % 64, value & 0xFFFF
                    else:
                        mask = value
                size = (block[offset] << 8 | block[offset + 1]) ^ mask
                offset += 2
                if size <= minimum + padding or limit - offset < size:
                    self._pending = (size, padding)
                    break
                body_end = offset + size - padding
                payloads.append(
                    open_chunk(count.to_bytes(2) + tail, block[offset:body_end])
                )
                count = (count + 1) & 0xFFFF
                offset += size
        finally:
            self._count = count
            self._buffered -= offset - start
            if offset == limit:
                self._segments.pop(0)
                self._offset = 0
            else:
                self._offset = offset

    def _end(self) -> End:
        self._ended = True
        self._segments.clear()
        self._offset = self._buffered = 0
        return END

    def _read_size(self, raw: bytes | memoryview) -> tuple[int, int]:
        padding, mask = self._next_padding_and_mask()
        if self._length_aead is not None:
            plain = self._length_aead.open(self._length_nonce(), raw)
            return int.from_bytes(plain) + TAG_LENGTH, padding
        return (raw[0] << 8 | raw[1]) ^ mask, padding

    def _open(self, body: bytes | memoryview) -> bytes:
        if self._aead is not None:
            return self._aead.open(self._nonce(), body)
        if self._cfb is not None:
            data = bytes(body[FNV_LENGTH:])
            if fnv1a32(data) != int.from_bytes(body[:FNV_LENGTH]):
                raise RemoteProtocolError("bad chunk checksum")
            return data
        return bytes(body)
