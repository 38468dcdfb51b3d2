"""The "VMess AEAD KDF": nested HMAC-SHA256 (spec 3.1).

Theory of operation: level 0 is HMAC-SHA256 keyed with ``b"VMess AEAD KDF"``.
Each path element is the *key* of a further HMAC whose hash function is the
previous level, and the value being derived is the message fed to the
innermost level. Both hashes of the chain have a 64-byte block and a 32-byte
output, so every level is plain HMAC arithmetic over the level below, and the
pads of a path element are computed once for all the values derived under it
(:func:`kdf_each`: the four keys and nonces of a request header).
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
    (exactly one block each), are made once and copied. Both level-0 runs
    are written out in one function: the calls cost as much as the hashing.
    """
    if len(key) > _BLOCK:
        return _wrap(_root, key)
    ipad, opad = _pads(key)
    inner_ipad = _sha256_after(_ROOT_IPAD, ipad)
    inner_opad = _sha256_after(_ROOT_IPAD, opad)
    root_outer = _ROOT_OUTER

    def level(message: bytes) -> bytes:
        inner = inner_ipad.copy()
        inner.update(message)
        outer = root_outer.copy()
        outer.update(inner.digest())
        inner = inner_opad.copy()
        inner.update(outer.digest())
        outer = root_outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    return level


_ROOT_INNER = _sha256_after(_ROOT_IPAD)


def _root(message: bytes) -> bytes:
    inner = _ROOT_INNER.copy()
    inner.update(message)
    outer = _ROOT_OUTER.copy()
    outer.update(inner.digest())
    return outer.digest()


Pads = list[tuple[bytes, bytes]]


def _path_pads(path: tuple[bytes, ...]) -> Pads | None:
    """The HMAC pads of the outer path elements, or None if one is longer
    than a block (its key would be hashed by the level below it)."""
    if any(len(element) > _BLOCK for element in path):
        return None
    return [_pads(element) for element in path]


def _derive(level: Hash, pads: Pads, message: bytes) -> bytes:
    """HMAC over ``level`` keyed by each of ``pads`` in turn, innermost first."""
    ipad, opad = pads[-1]
    if len(pads) == 1:
        return level(opad + level(ipad + message))
    inner = pads[:-1]
    return _derive(level, inner, opad + _derive(level, inner, ipad + message))


def kdf(key: bytes, *path: bytes) -> bytes:
    """KDF(key, path1, ..., pathN): 32 bytes.

    Args:
        key: the secret being derived from (cmdKey, ReqKey, RespIV, ...).
        path: salts and context (ASCII constants, EAuID, nonce), outermost last.
    """
    if len(path) == 1:
        return _first_level(path[0])(key)
    return kdf_each(key, path[:1], *path[1:])[0] if path else _root(key)


def kdf_each(key: bytes, salts: tuple[bytes, ...], *path: bytes) -> list[bytes]:
    """``kdf(key, salt, *path)`` for each salt: a request header derives four
    values under one (EAuID, nonce) path, whose pads are made once."""
    pads = _path_pads(path)
    derived = []
    for salt in salts:
        level = _first_level(salt)
        if not path:
            derived.append(level(key))
        elif pads is not None:
            derived.append(_derive(level, pads, key))
        else:
            for element in path:
                level = _wrap(level, element)
            derived.append(level(key))
    return derived


def kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of :func:`kdf`: an AES-128 key."""
    return kdf(key, *path)[:16]
