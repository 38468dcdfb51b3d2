"""Request and response headers in both modes: AEAD and legacy MD5 (spec 2, 3, 5).

Theory of operation: the instruction (``instruction.py``) is the same in both
modes; this module only wraps it. An AEAD request header is
``EAuID | GCM(BE16 L) | ConnNonce | GCM(instruction)``, each GCM keyed by the
nested KDF over the cmdKey, the EAuID and the ConnNonce. A legacy header is
``HMAC-MD5(id, ts) | CFB(instruction)``. The response keys come from the
request's body key and IV (MD5 for legacy, SHA-256 for AEAD), and the response
header is sealed by GCM (AEAD) or opens a CFB stream that a legacy-security
body continues.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING

from vtrio.errors import LocalProtocolError
from vtrio.protocol.ciphers import aes_128_cfb, aes_128_gcm
from vtrio.protocol.commands import decode_command, encode_command
from vtrio.protocol.kdf import kdf, kdf16, kdf_each
from vtrio.protocol.legacy import legacy_auth, legacy_iv

if TYPE_CHECKING:
    import uuid

    from vtrio.protocol.ciphers import StreamCipher
    from vtrio.protocol.commands import SwitchAccount

CONNECTION_NONCE_LENGTH = 8
SEALED_LENGTH_FIELD = 2 + 16
TAG_LENGTH = 16
# EAuID + sealed length + ConnNonce: what an AEAD server reads before L is known.
AEAD_REQUEST_PREFIX = 16 + SEALED_LENGTH_FIELD + CONNECTION_NONCE_LENGTH
RESPONSE_FIXED_LENGTH = 4  # V, Opt, Cmd, CmdLen

_REQUEST_LENGTH_KEY = b"VMess Header AEAD Key_Length"
_REQUEST_LENGTH_NONCE = b"VMess Header AEAD Nonce_Length"
_REQUEST_KEY = b"VMess Header AEAD Key"
_REQUEST_NONCE = b"VMess Header AEAD Nonce"
_REQUEST_SALTS = (
    _REQUEST_LENGTH_KEY,
    _REQUEST_LENGTH_NONCE,
    _REQUEST_KEY,
    _REQUEST_NONCE,
)
_RESPONSE_LENGTH_KEY = b"AEAD Resp Header Len Key"
_RESPONSE_LENGTH_NONCE = b"AEAD Resp Header Len IV"
_RESPONSE_KEY = b"AEAD Resp Header Key"
_RESPONSE_NONCE = b"AEAD Resp Header IV"


# --- AEAD request header (spec 3.3) ----------------------------------------


class AeadRequestSealer:
    """The two GCMs of one AEAD request header, keyed once per connection."""

    def __init__(self, cmd_key: bytes, auth_id: bytes, connection_nonce: bytes) -> None:
        self.auth_id = auth_id
        self.connection_nonce = connection_nonce
        length_key, length_nonce, key, nonce = kdf_each(
            cmd_key, _REQUEST_SALTS, auth_id, connection_nonce
        )
        self._length = aes_128_gcm(length_key[:16])
        self._length_nonce = length_nonce[:12]
        self._payload = aes_128_gcm(key[:16])
        self._payload_nonce = nonce[:12]

    def seal(self, instruction: bytes) -> bytes:
        """The whole header: EAuID, sealed length, ConnNonce, sealed instruction."""
        sealed_length = self._length.seal(
            self._length_nonce, struct.pack(">H", len(instruction)), self.auth_id
        )
        sealed = self._payload.seal(self._payload_nonce, instruction, self.auth_id)
        return b"".join((self.auth_id, sealed_length, self.connection_nonce, sealed))

    def open_length(self, sealed_length: bytes) -> int:
        """L from the 18-byte sealed length field.

        Raises:
            RemoteProtocolError: the tag does not verify.
        """
        plain = self._length.open(self._length_nonce, sealed_length, self.auth_id)
        return int.from_bytes(plain)

    def open(self, sealed_instruction: bytes) -> bytes:
        """The instruction from its sealed form (L + 16 bytes).

        Raises:
            RemoteProtocolError: the tag does not verify.
        """
        return self._payload.open(self._payload_nonce, sealed_instruction, self.auth_id)


# --- legacy request header (spec 2.1) --------------------------------------


def seal_legacy_request(
    hmac_id: uuid.UUID, cmd_key: bytes, timestamp: int, instruction: bytes
) -> bytes:
    """Auth (HMAC-MD5 keyed with ``hmac_id``) then the CFB-encrypted instruction.

    The CFB key is always the primary ID's cmdKey, whichever ID keyed the HMAC.
    """
    cipher = aes_128_cfb(cmd_key, legacy_iv(timestamp))
    return legacy_auth(hmac_id, timestamp) + cipher.encrypt(instruction)


def legacy_request_cipher(cmd_key: bytes, timestamp: int) -> StreamCipher:
    """The CFB stream a server decrypts a legacy instruction with."""
    return aes_128_cfb(cmd_key, legacy_iv(timestamp))


# --- response (spec 5) ------------------------------------------------------


def response_key_iv(
    request_key: bytes, request_iv: bytes, *, legacy: bool
) -> tuple[bytes, bytes]:
    """RespKey and RespIV: MD5 of ReqKey/ReqIV (legacy) or SHA-256 prefixes (AEAD)."""
    if legacy:
        return hashlib.md5(request_key).digest(), hashlib.md5(request_iv).digest()
    return (
        hashlib.sha256(request_key).digest()[:16],
        hashlib.sha256(request_iv).digest()[:16],
    )


def encode_response(response_auth: int, command: SwitchAccount | None) -> bytes:
    """The plaintext response header: V, Opt 0, Cmd, CmdLen, CmdData."""
    if command is None:
        return bytes((response_auth, 0, 0, 0))
    code, data = encode_command(command)
    return bytes((response_auth, 0, code, len(data))) + data


def decode_response_command(fixed: bytes, data: bytes) -> SwitchAccount | None:
    """The command of a response whose 4 fixed bytes and CmdData are known."""
    return decode_command(fixed[2], data) if fixed[2] else None


class AeadResponseSealer:
    """The two GCMs of an AEAD response header.

    The keys come from RespKey and the nonces from RespIV; there is no AAD.
    """

    def __init__(self, response_key: bytes, response_iv: bytes) -> None:
        self._length = aes_128_gcm(kdf16(response_key, _RESPONSE_LENGTH_KEY))
        self._length_nonce = kdf(response_iv, _RESPONSE_LENGTH_NONCE)[:12]
        self._payload = aes_128_gcm(kdf16(response_key, _RESPONSE_KEY))
        self._payload_nonce = kdf(response_iv, _RESPONSE_NONCE)[:12]

    def seal(self, header: bytes) -> bytes:
        """Sealed length (18 bytes) then the sealed header (M + 16 bytes)."""
        if len(header) > 0xFFFF:
            raise LocalProtocolError("response header too long")
        return self._length.seal(
            self._length_nonce, struct.pack(">H", len(header))
        ) + self._payload.seal(self._payload_nonce, header)

    def open_length(self, sealed_length: bytes) -> int:
        """M from the 18-byte sealed length.

        Raises:
            RemoteProtocolError: the tag does not verify.
        """
        return int.from_bytes(self._length.open(self._length_nonce, sealed_length))

    def open(self, sealed: bytes) -> bytes:
        """The plaintext response header.

        Raises:
            RemoteProtocolError: the tag does not verify.
        """
        return self._payload.open(self._payload_nonce, sealed)
