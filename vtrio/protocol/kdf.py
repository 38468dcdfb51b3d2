"""The "VMess AEAD KDF": nested HMAC-SHA256 (spec 3.1).

Theory of operation: level 0 is HMAC-SHA256 keyed with ``b"VMess AEAD KDF"``.
Each path element is the *key* of a further HMAC whose hash function is the
previous level, and the value being derived is the message fed to the
innermost level. Both hashes of the chain have a 64-byte block and a 32-byte
output, so every level is plain HMAC arithmetic over the level below, and the
pads of a path element are computed once per call.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

ROOT_KEY = b"VMess AEAD KDF"
_BLOCK = 64
# XOR with the HMAC pad bytes as a C-speed byte translation.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))

Hash = Callable[[bytes], bytes]


def _root(message: bytes) -> bytes:
    return hmac.digest(ROOT_KEY, message, hashlib.sha256)


def _wrap(inner: Hash, key: bytes) -> Hash:
    # HMAC over ``inner``; a key longer than the block is hashed first (RFC 2104).
    if len(key) > _BLOCK:
        key = inner(key)
    key = key.ljust(_BLOCK, b"\0")
    ipad = key.translate(_IPAD)
    opad = key.translate(_OPAD)
    return lambda message: inner(opad + inner(ipad + message))


def kdf(key: bytes, *path: bytes) -> bytes:
    """KDF(key, path1, ..., pathN): 32 bytes.

    Args:
        key: the secret being derived from (cmdKey, ReqKey, RespIV, ...).
        path: salts and context (ASCII constants, EAuID, nonce), outermost last.
    """
    derive: Hash = _root
    for element in path:
        derive = _wrap(derive, element)
    return derive(key)


def kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of :func:`kdf`: an AES-128 key."""
    return kdf(key, *path)[:16]
