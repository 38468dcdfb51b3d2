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

    from vtrio.protocol.ciphers import AEAD, StreamCipher

# Xray's writer limit with padding; every chunk stays <= 16384 bytes for sing.
MAX_CHUNK_PAYLOAD = 8110
MAX_PADDING = 63
TAG_LENGTH = 16
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
        if self._xof is None:
            return 0, 0
        drawn = self._xof.read(self._draw)
        padding = int.from_bytes(drawn[:2]) % 64 if self.framing.padding else 0
        mask = int.from_bytes(drawn[-2:]) if self.framing.masking else 0
        return padding, mask

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

    def encode_stream(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stream data as chunks of at most 8110 plaintext bytes (b"" for b"")."""
        view = memoryview(data)
        if not self.framing.chunked:
            return self._encrypt(view)
        return b"".join(
            self._chunk(view[offset : offset + MAX_CHUNK_PAYLOAD])
            for offset in range(0, len(view), MAX_CHUNK_PAYLOAD)
        )

    def encode_datagram(self, payload: bytes | bytearray | memoryview) -> bytes:
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
        return self._chunk(memoryview(payload))

    def encode_end(self) -> bytes:
        """The empty chunk that ends the direction; b"" when not chunked."""
        return self._chunk(memoryview(b"")) if self.framing.chunked else b""

    def _encrypt(self, view: memoryview) -> bytes:
        return self._cfb.encrypt(view) if self._cfb is not None else bytes(view)

    def _chunk(self, payload: memoryview) -> bytes:
        framing = self.framing
        padding, mask = self._next_padding_and_mask()
        size = len(payload) + framing.overhead + padding
        if self._length_aead is not None:
            length = self._length_aead.seal(
                self._length_nonce(), struct.pack(">H", size - TAG_LENGTH)
            )
        else:
            length = struct.pack(">H", size ^ mask)
        if self._aead is not None:
            sealed = self._aead.seal(self._nonce(), payload)
        elif self._cfb is not None:
            sealed = struct.pack(">I", fnv1a32(payload)) + payload
        else:
            sealed = bytes(payload)
        chunk = b"".join((length, sealed, self._random(padding) if padding else b""))
        return self._cfb.encrypt(chunk) if self._cfb is not None else chunk


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
        self._buffer = bytearray()
        self._eof = False
        self._ended = False
        # (Size, padding) of a chunk whose length field was read but whose
        # body has not fully arrived: the XOF must not be drawn twice.
        self._pending: tuple[int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` means EOF. Bytes after the end are dropped."""
        if self._ended:
            return
        if not data:
            self._eof = True
        elif self._cfb is not None:
            self._buffer += self._cfb.decrypt(data)
        else:
            self._buffer += data

    def next_payload(self) -> bytes | End | None:
        """The next chunk's plaintext, END, or None while more bytes are needed.

        Raises:
            RemoteProtocolError: a bad tag or FNV, a size smaller than its
                overhead, or EOF inside a chunk.
        """
        if self._ended:
            return END
        if not self.framing.chunked:
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
            return self._end() if self._eof else None
        if self._pending is None:
            if len(self._buffer) < self.framing.length_field:
                if self._eof:
                    if self._buffer:
                        raise RemoteProtocolError("EOF inside a chunk length")
                    return self._end()
                return None
            self._pending = self._read_size()
        size, padding = self._pending
        if size == self.framing.overhead + padding:
            return self._end()  # upstream readers stop here, unread tag and all
        if size < self.framing.overhead + padding:
            raise RemoteProtocolError(f"chunk size {size} below its overhead")
        if len(self._buffer) < size:
            if self._eof:
                raise RemoteProtocolError("EOF inside a chunk")
            return None
        self._pending = None
        body = bytes(memoryview(self._buffer)[: size - padding])
        del self._buffer[:size]
        return self._open(body)

    def _end(self) -> End:
        self._ended = True
        self._buffer.clear()
        return END

    def _read_size(self) -> tuple[int, int]:
        padding, mask = self._next_padding_and_mask()
        field = self.framing.length_field
        raw = bytes(self._buffer[:field])
        del self._buffer[:field]
        if self._length_aead is not None:
            plain = self._length_aead.open(self._length_nonce(), raw)
            return int.from_bytes(plain) + TAG_LENGTH, padding
        return int.from_bytes(raw) ^ mask, padding

    def _open(self, body: bytes) -> bytes:
        if self._aead is not None:
            return self._aead.open(self._nonce(), body)
        if self._cfb is not None:
            data = body[FNV_LENGTH:]
            if fnv1a32(data) != int.from_bytes(body[:FNV_LENGTH]):
                raise RemoteProtocolError("bad chunk checksum")
            return data
        return body
