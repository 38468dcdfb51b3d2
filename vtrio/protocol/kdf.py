"""The "VMess AEAD KDF": nested HMAC-SHA256 (spec 3.1).

Theory of operation: level 0 is HMAC-SHA256 keyed with ``b"VMess AEAD KDF"``.
Each path element is the *key* of a further HMAC whose hash function is the
previous level, and the value being derived is the message fed to the
innermost level. Both hashes of the chain have a 64-byte block and a 32-byte
output, so every level is plain HMAC arithmetic over the level below, and the
pads of a path element are computed once per call.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

ROOT_KEY = b"VMess AEAD KDF"
_BLOCK = 64
# XOR with the HMAC pad bytes as a C-speed byte translation.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))

Hash = Callable[[bytes], bytes]


def _sha256_after(*blocks: bytes) -> hashlib._Hash:
    state = hashlib.sha256()
    for block in blocks:
        state.update(block)
    return state


def _pads(key: bytes) -> tuple[bytes, bytes]:
    key = key.ljust(_BLOCK, b"\0")
    return key.translate(_IPAD), key.translate(_OPAD)


_ROOT_IPAD, _ROOT_OPAD = _pads(ROOT_KEY)
_ROOT_OUTER = _sha256_after(_ROOT_OPAD)


def _wrap(inner: Hash, key: bytes) -> Hash:
    # HMAC over ``inner``; a key longer than the block is hashed first (RFC 2104).
    ipad, opad = _pads(inner(key) if len(key) > _BLOCK else key)
    return lambda message: inner(opad + inner(ipad + message))


@functools.lru_cache(maxsize=64)
def _first_level(key: bytes) -> Hash:
    """HMAC keyed ``key`` over level 0, for the constant innermost salts.

    Level 0 runs 2**depth times per derivation (40 times per handshake);
    its SHA-256 states after the key pads, and after this level's pads
    (exactly one block each), are made once and copied.
    """
    if len(key) > _BLOCK:
        return _wrap(_root, key)
    ipad, opad = _pads(key)
    inner_ipad = _sha256_after(_ROOT_IPAD, ipad)
    inner_opad = _sha256_after(_ROOT_IPAD, opad)

    def level(message: bytes) -> bytes:
        return _finish(inner_opad, _finish(inner_ipad, message))

    return level


def _finish(inner_state: hashlib._Hash, message: bytes) -> bytes:
    """Level 0 of (the pad block in ``inner_state`` + ``message``)."""
    inner = inner_state.copy()
    inner.update(message)
    outer = _ROOT_OUTER.copy()
    outer.update(inner.digest())
    return outer.digest()


_ROOT_INNER = _sha256_after(_ROOT_IPAD)


def _root(message: bytes) -> bytes:
    return _finish(_ROOT_INNER, message)


def kdf(key: bytes, *path: bytes) -> bytes:
    """KDF(key, path1, ..., pathN): 32 bytes.

    Args:
        key: the secret being derived from (cmdKey, ReqKey, RespIV, ...).
        path: salts and context (ASCII constants, EAuID, nonce), outermost last.
    """
    derive: Hash = _first_level(path[0]) if path else _root
    for element in path[1:]:
        derive = _wrap(derive, element)
    return derive(key)


def kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of :func:`kdf`: an AES-128 key."""
    return kdf(key, *path)[:16]
