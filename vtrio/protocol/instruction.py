"""The request instruction: the plaintext inside every request header (spec 4).

Theory of operation: the same bytes travel in both header modes, sealed by GCM
(AEAD header) or CFB-encrypted (legacy header), and always end with a BE32
FNV1a of everything before it. The AEAD header states its length up front; the
legacy one does not, so :func:`required_length` tells the legacy decoder how
many bytes to decrypt next from the prefix it already has, and it never
decrypts a byte of the body with the header's cipher.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol.address import Address, address_length, pack_address, unpack_address

VERSION = 1
FIXED_LENGTH = 38  # Ver, IV, Key, V, Opt, P|Sec, reserved, Cmd
CHECKSUM_LENGTH = 4
MAX_PADDING = 15
# 38 + port 2 + ATyp 1 + domain length 1 + 255 + padding 15 + FNV 4 (spec 4.1).
MAX_LENGTH = 316


class Command(enum.IntEnum):
    """What the connection carries (spec 4.1, ``Cmd``)."""

    TCP = 1
    UDP = 2
    MUX = 3


class SecurityType(enum.IntEnum):
    """The body security nibble as it travels (spec 4.3)."""

    LEGACY = 1  # aes-128-cfb
    AES_128_GCM = 3
    CHACHA20_POLY1305 = 4
    NONE = 5  # also what a "zero" client sends, with ChunkStream cleared


class Option(enum.IntFlag):
    """The ``Opt`` bits (spec 4.2)."""

    CHUNK_STREAM = 0x01
    CONNECTION_REUSE = 0x02
    CHUNK_MASKING = 0x04
    GLOBAL_PADDING = 0x08
    AUTHENTICATED_LENGTH = 0x10


def fnv1a32(data: bytes | bytearray | memoryview) -> int:
    """FNV-1a, 32 bits. Only headers and legacy chunks use it, so pure Python."""
    value = 0x811C9DC5
    for byte in bytes(data):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


@dataclass(frozen=True, slots=True)
class Request:
    """Where a client connection goes: a command and, unless Mux, a destination."""

    command: Command
    address: Address | None = None
    port: int = 0

    def __post_init__(self) -> None:
        if self.command is Command.MUX:
            return
        if self.address is None or not 0 <= self.port <= 0xFFFF:
            raise LocalProtocolError("TCP and UDP requests need an address and port")


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction; ``security`` is the raw nibble (0..15)."""

    iv: bytes
    key: bytes
    response_auth: int
    options: Option
    security: int
    request: Request
    padding: bytes = b""

    def encode(self) -> bytes:
        """The instruction bytes, FNV1a included.

        Raises:
            LocalProtocolError: a field does not fit its slot.
        """
        if len(self.iv) != 16 or len(self.key) != 16:
            raise LocalProtocolError("body IV and key must be 16 bytes")
        if len(self.padding) > MAX_PADDING:
            raise LocalProtocolError("instruction padding is at most 15 bytes")
        parts = [
            bytes((VERSION,)),
            self.iv,
            self.key,
            bytes(
                (
                    self.response_auth,
                    int(self.options),
                    (len(self.padding) << 4) | self.security,
                    0,
                    int(self.request.command),
                )
            ),
        ]
        if self.request.command is not Command.MUX:
            assert self.request.address is not None  # checked by Request
            parts.append(struct.pack(">H", self.request.port))
            parts.append(pack_address(self.request.address))
        parts.append(self.padding)
        body = b"".join(parts)
        return body + struct.pack(">I", fnv1a32(body))


def _has_address(command: int) -> bool:
    # v2ray reads an address only for TCP and UDP; anything else, Mux included,
    # goes straight to the padding (an unknown command then fails below).
    return command in (Command.TCP, Command.UDP)


def required_length(prefix: bytes) -> int:
    """The smallest total instruction length consistent with ``prefix``.

    The answer only grows as ``prefix`` grows; once ``len(prefix)`` reaches it
    the instruction is complete.

    Raises:
        RemoteProtocolError: the address type is unknown.
    """
    if len(prefix) < FIXED_LENGTH:
        return FIXED_LENGTH
    tail = (prefix[35] >> 4) + CHECKSUM_LENGTH
    if not _has_address(prefix[37]):
        return FIXED_LENGTH + tail
    address = address_length(prefix, FIXED_LENGTH + 2)
    if address is None:
        # Port and ATyp, or the domain's length byte, are still missing.
        return max(len(prefix) + 1, FIXED_LENGTH + 3)
    return FIXED_LENGTH + 2 + address + tail


def decode_instruction(plain: bytes) -> Instruction:
    """Parse and check a complete instruction (its FNV1a included).

    Raises:
        RemoteProtocolError: bad checksum, bad address, unknown command, or a
            length that does not match the contents. The message says which.
    """
    if len(plain) < FIXED_LENGTH + CHECKSUM_LENGTH:
        raise RemoteProtocolError("instruction too short")
    (checksum,) = struct.unpack_from(">I", plain, len(plain) - CHECKSUM_LENGTH)
    body = plain[:-CHECKSUM_LENGTH]
    if fnv1a32(body) != checksum:
        raise RemoteProtocolError("bad instruction checksum")
    padding_length = plain[35] >> 4
    command = plain[37]
    if not _has_address(command):
        end = FIXED_LENGTH
        if command != Command.MUX:
            raise RemoteProtocolError(f"unknown command {command}")
        request = Request(Command.MUX)
    else:
        (port,) = struct.unpack_from(">H", plain, FIXED_LENGTH)
        address, end = unpack_address(body, FIXED_LENGTH + 2)
        request = Request(Command(command), address, port)
    if end + padding_length != len(body):
        raise RemoteProtocolError("instruction length does not match its fields")
    return Instruction(
        iv=plain[1:17],
        key=plain[17:33],
        response_auth=plain[33],
        options=Option(plain[34]),
        security=plain[35] & 0x0F,
        request=request,
        padding=body[end:],
    )
