"""Every cipher VMess needs, behind one small interface.

Theory of operation: this is the only module that touches a crypto library, so
the cost of each operation can be measured and tuned in one place. VMess seals
every body chunk with a fresh nonce under a per-connection key, so the AEAD
objects here take the key once and the nonce per call.

Two backends implement the AEADs: pycryptodome (always installed) and, when the
optional ``cryptography`` package is importable, OpenSSL through it, which
accepts a nonce per call on a reused key object and so avoids pycryptodome's
per-object set-up cost (research/crypto-cost.md). ``VTRIO_CRYPTO_BACKEND``
(``pycryptodome`` or ``cryptography``) forces one. Both produce the same bytes.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import hmac
import itertools
import operator
import os
from typing import TYPE_CHECKING, Any, Protocol

from Crypto.Cipher import AES, ChaCha20_Poly1305
from Crypto.Hash import SHAKE128
from Crypto.Util.strxor import strxor

from vtrio.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cryptography.hazmat.primitives.ciphers import Cipher, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

Buffer = bytes | bytearray | memoryview
TAG_SIZE = 16


class AEAD(Protocol):
    """An AEAD with a fixed key; the nonce comes with every call."""

    def seal(self, nonce: bytes, plaintext: Buffer, aad: bytes = b"") -> bytes:
        """Encrypt and authenticate; returns ciphertext followed by the 16-byte tag."""
        ...

    def seal_into(self, nonce: bytes, plaintext: Buffer, out: memoryview) -> None:
        """:meth:`seal` writing into ``out`` (exactly ``len(plaintext) + 16``
        bytes), so a body encoder builds a whole write in one buffer."""
        ...

    def open(self, nonce: bytes, sealed: Buffer, aad: bytes = b"") -> bytes:
        """Verify and decrypt ciphertext followed by its tag.

        Raises:
            RemoteProtocolError: the tag does not match or the input is too short.
        """
        ...


class _OneShotAEAD(Protocol):
    """The part of a pycryptodome AEAD object used here."""

    def update(self, aad: bytes) -> object: ...
    def encrypt_and_digest(self, plaintext: Buffer) -> tuple[bytes, bytes]: ...
    def decrypt_and_verify(self, ciphertext: Buffer, tag: Buffer) -> bytes: ...


class _PyCryptodomeAEAD:
    """pycryptodome binds the nonce at object creation: one object per call."""

    __slots__ = ("_key", "_new")

    def __init__(self, key: bytes, chacha: bool) -> None:
        self._key = bytes(key)
        if chacha:
            self._new = self._new_chacha
        else:
            self._new = self._new_gcm

    def _new_gcm(self, nonce: bytes) -> _OneShotAEAD:
        return AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)

    def _new_chacha(self, nonce: bytes) -> _OneShotAEAD:
        return ChaCha20_Poly1305.new(key=self._key, nonce=nonce)

    def seal(self, nonce: bytes, plaintext: Buffer, aad: bytes = b"") -> bytes:
        cipher = self._new(nonce)
        if aad:
            cipher.update(aad)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return bytes(ciphertext) + bytes(tag)

    def seal_into(self, nonce: bytes, plaintext: Buffer, out: memoryview) -> None:
        out[:] = self.seal(nonce, plaintext)

    def open(self, nonce: bytes, sealed: Buffer, aad: bytes = b"") -> bytes:
        ciphertext, tag = _split_tag(sealed)
        cipher = self._new(nonce)
        if aad:
            cipher.update(aad)
        try:
            return bytes(cipher.decrypt_and_verify(ciphertext, tag))
        except ValueError as exc:
            raise RemoteProtocolError("authentication tag mismatch") from exc


class _RawC:
    """pycryptodome's C functions for ECB, XOR, GHASH, ChaCha20 and
    Poly1305, called directly.

    Each of its Python wrappers spends about 3 µs checking arguments, more
    than the work on a 16 KiB chunk, and a GCM chunk needs four calls. This
    is private API (``Crypto.Cipher._mode_ecb`` / ``_mode_gcm`` /
    ``ChaCha20``, ``Crypto.Hash.Poly1305``, ``Crypto.Util.strxor``, cffi
    only): :func:`_raw_c` checks it against the public AEADs once and returns
    None if anything moved, and the tests compare them byte for byte.
    """

    def __init__(self) -> None:
        from Crypto.Cipher import ChaCha20, _mode_ecb, _mode_gcm
        from Crypto.Hash import Poly1305
        from Crypto.Util import _raw_api
        from Crypto.Util.strxor import _raw_strxor

        if _raw_api.backend != "cffi":
            raise ImportError("pycryptodome runs on ctypes")
        self.ffi: Any = _raw_api.ffi
        self.ecb_encrypt: Any = _mode_ecb.raw_ecb_lib.ECB_encrypt
        self.ecb_decrypt: Any = _mode_ecb.raw_ecb_lib.ECB_decrypt
        self.xor: Any = _raw_strxor.strxor
        ghash_lib: Any = _mode_gcm._ghash_clmul or _mode_gcm._ghash_portable
        self.ghash: Any = ghash_lib.ghash
        self.ghash_class: Any = _mode_gcm._GHASH
        self.ghash_lib = ghash_lib
        self.chacha20: Any = ChaCha20._raw_chacha20_lib
        self.poly1305: Any = Poly1305._raw_poly1305

    def pointer(self, data: Buffer) -> Any:
        return self.ffi.from_buffer("uint8_t[]", data)


def _raw_c() -> _RawC | None:
    try:
        raw = _RawC()
        key, nonce = bytes(range(16)), bytes(range(12))
        for size in (0, 5, 16, 100):
            data, aad = bytes(range(size)), b"aad"[: size % 4]
            reference = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
            reference.update(aad)
            sealed = b"".join(reference.encrypt_and_digest(data))
            if _CounterGCM(key, raw).seal(nonce, data, aad) != sealed:
                return None
            chacha = ChaCha20_Poly1305.new(key=key * 2, nonce=nonce)
            chacha.update(aad)
            sealed = b"".join(chacha.encrypt_and_digest(data))
            if _RawChaCha20Poly1305(key * 2, raw).seal(nonce, data, aad) != sealed:
                return None
        out = raw.ffi.new("uint8_t[]", _BLOCK)
        state = AES.new(key, AES.MODE_ECB)
        raw.ecb_decrypt(state._state.get(), raw.pointer(key), out, _BLOCK)
        if bytes(raw.ffi.buffer(out)) != AES.new(key, AES.MODE_ECB).decrypt(key):
            return None
    except (ImportError, AttributeError, TypeError, ValueError, LocalProtocolError):
        return None
    return raw


_BLOCK = 16
# Counter blocks for the largest GCM call (a 65535-byte chunk): block k holds
# counter k + 1 after 12 zero bytes, where each key XORs in its nonce.
_COUNTER_TEMPLATE = b"".join(
    bytes(12) + (k + 1).to_bytes(4, "big") for k in range(1 + 65536 // _BLOCK)
)
_ZERO_BLOCK = bytes(_BLOCK)
_ZERO_CHACHA_BLOCK = bytes(64)


def _split_tag(sealed: Buffer) -> tuple[memoryview, memoryview]:
    """Ciphertext and tag of a sealed buffer.

    Raises:
        RemoteProtocolError: shorter than a tag.
    """
    if len(sealed) < TAG_SIZE:
        raise RemoteProtocolError("sealed data shorter than its tag")
    view = memoryview(sealed)
    return view[:-TAG_SIZE], view[-TAG_SIZE:]


class _SealIntoAEAD(abc.ABC):
    """``seal`` through ``seal_into``, for the AEADs built from C functions."""

    __slots__ = ()

    @abc.abstractmethod
    def seal_into(
        self, nonce: bytes, plaintext: Buffer, out: memoryview, aad: bytes = b""
    ) -> None:
        """Seal ``plaintext`` into ``out`` (its length plus the tag)."""

    def seal(self, nonce: bytes, plaintext: Buffer, aad: bytes = b"") -> bytes:
        out = bytearray(len(plaintext) + TAG_SIZE)
        self.seal_into(nonce, plaintext, memoryview(out), aad)
        return bytes(out)


class _CounterGCM(_SealIntoAEAD):
    """AES-GCM built per key from an ECB key schedule and a GHASH table.

    pycryptodome spends about 60 µs creating a GCM object and VMess needs a
    new nonce per chunk; here the key schedule and the GHASH multiplication
    table are made once per key, and each chunk costs one ECB call over its
    counter blocks (J0 first, for the tag mask), one XOR and one GHASH pass,
    all through pycryptodome's C functions. A body direction's nonces differ
    only in their first two bytes (the chunk count), so the counter blocks
    for the rest of the nonce are kept and only those two bytes are patched.
    """

    __slots__ = ("_counters", "_ecb", "_ghash", "_nonce_tail", "_raw")

    def __init__(self, key: bytes, raw: _RawC) -> None:
        self._raw = raw
        self._ecb: Any = AES.new(key, AES.MODE_ECB)
        # The GHASH object owns the expanded table the C function reads.
        self._ghash: Any = raw.ghash_class(
            self._ecb.encrypt(_ZERO_BLOCK), raw.ghash_lib
        )
        self._nonce_tail = b""
        self._counters = b""

    def _keystream(self, nonce: bytes, size: int) -> bytearray:
        """E(J0), the tag mask, followed by ``size`` bytes of keystream."""
        blocks = 1 + (size + _BLOCK - 1) // _BLOCK
        if blocks * _BLOCK > len(_COUNTER_TEMPLATE):
            raise LocalProtocolError(f"{size} bytes is more than a VMess chunk")
        if nonce[2:] != self._nonce_tail:
            self._nonce_tail = nonce[2:]
            pattern = (bytes(2) + self._nonce_tail + bytes(4)) * (
                len(_COUNTER_TEMPLATE) // _BLOCK
            )
            self._counters = bytes(strxor(_COUNTER_TEMPLATE, pattern))
        stream = bytearray(self._counters[: blocks * _BLOCK])
        stream[0::_BLOCK] = nonce[0:1] * blocks
        stream[1::_BLOCK] = nonce[1:2] * blocks
        pointer = self._raw.pointer(stream)
        if self._raw.ecb_encrypt(self._ecb._state.get(), pointer, pointer, len(stream)):
            raise LocalProtocolError("AES-ECB failed")
        return stream

    def _tag(self, stream: bytearray, ciphertext: Buffer, aad: bytes) -> bytes:
        raw = self._raw
        size = len(ciphertext)
        whole = size - size % _BLOCK
        lengths = (len(aad) * 8).to_bytes(8, "big") + (size * 8).to_bytes(8, "big")
        tail = bytes(ciphertext[whole:])
        last = tail + bytes(-len(tail) % _BLOCK) + lengths
        parts: list[Buffer] = [ciphertext[:whole], last]
        if aad:
            parts.insert(0, aad + bytes(-len(aad) % _BLOCK))
        state = raw.ffi.new("uint8_t[16]")
        table = self._ghash._exp_key.get()
        for part in filter(len, parts):
            if raw.ghash(state, raw.pointer(part), len(part), state, table):
                raise LocalProtocolError("GHASH failed")
        digest = int.from_bytes(raw.ffi.buffer(state)) ^ int.from_bytes(stream[:_BLOCK])
        return digest.to_bytes(_BLOCK)

    def seal_into(
        self, nonce: bytes, plaintext: Buffer, out: memoryview, aad: bytes = b""
    ) -> None:
        size = len(plaintext)
        stream = self._keystream(nonce, size)
        ciphertext = out[:size]
        if size:
            raw = self._raw
            raw.xor(
                raw.pointer(plaintext),
                raw.pointer(stream) + _BLOCK,
                raw.pointer(ciphertext),
                size,
            )
        out[size:] = self._tag(stream, ciphertext, aad)

    def open(self, nonce: bytes, sealed: Buffer, aad: bytes = b"") -> bytes:
        ciphertext, tag = _split_tag(sealed)
        size = len(ciphertext)
        stream = self._keystream(nonce, size)
        if not hmac.compare_digest(self._tag(stream, ciphertext, aad), tag):
            raise RemoteProtocolError("authentication tag mismatch")
        if not size:
            return b""
        raw = self._raw
        plain = raw.ffi.new("uint8_t[]", size)
        raw.xor(raw.pointer(ciphertext), raw.pointer(stream) + _BLOCK, plain, size)
        return bytes(raw.ffi.buffer(plain))


class _RawChaCha20Poly1305(_SealIntoAEAD):
    """ChaCha20-Poly1305 (RFC 8439) from pycryptodome's C functions.

    pycryptodome's own object costs 30-50 µs to create, once per chunk
    since the nonce changes per chunk; here a chunk costs a ChaCha20 state
    for its nonce, one call for the Poly1305 key (block 0) and one over the
    data (from block 1), and a Poly1305 pass over the padded AAD, ciphertext
    and lengths. The C-side buffers are made once per key: one object serves
    one direction of one connection, one call at a time.
    """

    __slots__ = ("_holder", "_key", "_one_time_key", "_raw", "_tag_out")

    def __init__(self, key: bytes, raw: _RawC) -> None:
        self._key = bytes(key)
        self._raw = raw
        self._holder: Any = raw.ffi.new("void **")
        self._one_time_key: Any = raw.ffi.new("uint8_t[64]")
        self._tag_out: Any = raw.ffi.new("uint8_t[16]")

    def _crypt(self, nonce: bytes, data: Buffer, out: Any) -> bytes:
        """XOR ``data`` with the keystream from block 1 into ``out``; returns
        the one-time Poly1305 key (block 0)."""
        raw, holder, one_time_key = self._raw, self._holder, self._one_time_key
        lib = raw.chacha20
        if lib.chacha20_init(holder, self._key, 32, nonce, len(nonce)):
            raise LocalProtocolError("ChaCha20 set-up failed")
        state = holder[0]
        try:
            failed = lib.chacha20_encrypt(state, _ZERO_CHACHA_BLOCK, one_time_key, 64)
            if data and not failed:
                failed = lib.chacha20_encrypt(state, raw.pointer(data), out, len(data))
            if failed:
                raise LocalProtocolError("ChaCha20 failed")
        finally:
            lib.chacha20_destroy(state)
        return bytes(raw.ffi.buffer(one_time_key, 32))

    def _tag(self, one_time_key: bytes, ciphertext: Buffer, aad: bytes) -> bytes:
        raw, holder = self._raw, self._holder
        lib = raw.poly1305
        if lib.poly1305_init(holder, one_time_key[:16], 16, one_time_key[16:], 16):
            raise LocalProtocolError("Poly1305 set-up failed")
        state = holder[0]
        try:
            size = len(ciphertext)
            parts: list[Buffer] = [
                aad + bytes(-len(aad) % 16),
                ciphertext,
                bytes(-size % 16)
                + len(aad).to_bytes(8, "little")
                + size.to_bytes(8, "little"),
            ]
            for part in filter(len, parts):
                if lib.poly1305_update(state, raw.pointer(part), len(part)):
                    raise LocalProtocolError("Poly1305 failed")
            if lib.poly1305_digest(state, self._tag_out, 16):
                raise LocalProtocolError("Poly1305 failed")
        finally:
            lib.poly1305_destroy(state)
        return bytes(raw.ffi.buffer(self._tag_out))

    def seal_into(
        self, nonce: bytes, plaintext: Buffer, out: memoryview, aad: bytes = b""
    ) -> None:
        size = len(plaintext)
        ciphertext = out[:size]
        one_time_key = self._crypt(nonce, plaintext, self._raw.pointer(ciphertext))
        out[size:] = self._tag(one_time_key, ciphertext, aad)

    def open(self, nonce: bytes, sealed: Buffer, aad: bytes = b"") -> bytes:
        ciphertext, tag = _split_tag(sealed)
        plain = bytearray(len(ciphertext))
        one_time_key = self._crypt(nonce, ciphertext, self._raw.pointer(plain))
        if not hmac.compare_digest(self._tag(one_time_key, ciphertext, aad), tag):
            raise RemoteProtocolError("authentication tag mismatch")
        return bytes(plain)


_RAW_C = _raw_c()


def _choose_backend() -> str:
    wanted = os.environ.get("VTRIO_CRYPTO_BACKEND", "")
    if wanted == "pycryptodome":
        return wanted
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
    except ImportError:
        if wanted == "cryptography":
            raise
        return "pycryptodome"
    return "cryptography"


_BACKEND = _choose_backend()


def backend_name() -> str:
    """The AEAD backend in use: ``pycryptodome`` or ``cryptography``."""
    return _BACKEND


@functools.cache
def _openssl_aeads() -> tuple[type[AESGCM], type[ChaCha20Poly1305], type[Exception]]:
    """cryptography's AEAD classes, imported once (a handshake makes six)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    return AESGCM, ChaCha20Poly1305, InvalidTag


class _OpenSSLAEAD:
    """``cryptography``'s AEAD objects take the nonce per call: reuse one per key."""

    __slots__ = ("_aead", "_invalid")

    def __init__(self, key: bytes, chacha: bool) -> None:
        aesgcm, chacha20poly1305, self._invalid = _openssl_aeads()
        self._aead = chacha20poly1305(key) if chacha else aesgcm(key)

    def seal(self, nonce: bytes, plaintext: Buffer, aad: bytes = b"") -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad or None)

    def seal_into(self, nonce: bytes, plaintext: Buffer, out: memoryview) -> None:
        self._aead.encrypt_into(nonce, plaintext, None, out)

    def open(self, nonce: bytes, sealed: Buffer, aad: bytes = b"") -> bytes:
        if len(sealed) < TAG_SIZE:
            raise RemoteProtocolError("sealed data shorter than its tag")
        try:
            return self._aead.decrypt(nonce, sealed, aad or None)
        except self._invalid as exc:
            raise RemoteProtocolError("authentication tag mismatch") from exc


def _aead(key: bytes, chacha: bool) -> AEAD:
    if _BACKEND == "cryptography":
        return _OpenSSLAEAD(key, chacha)
    if _RAW_C is not None:
        return _RawChaCha20Poly1305(key, _RAW_C) if chacha else _CounterGCM(key, _RAW_C)
    return _PyCryptodomeAEAD(key, chacha)


def aes_128_gcm(key: bytes) -> AEAD:
    """AES-128-GCM with a 12-byte nonce and a 16-byte tag."""
    return _aead(key, chacha=False)


def chacha20_poly1305(key: bytes) -> AEAD:
    """IETF ChaCha20-Poly1305 with a 32-byte key and a 12-byte nonce."""
    return _aead(key, chacha=True)


class BlockCipher:
    """Single AES blocks (the AEAD auth ID, spec section 3.2).

    A server tries one block per recently seen user on every handshake, so
    the per-call cost matters: with ``cryptography`` the ECB contexts are
    made once and reused (about 0.5 µs a block); on pycryptodome its ECB C
    functions are called directly (about 1.0 µs, against 2.4 µs through its
    Python wrapper).
    """

    __slots__ = ("_ecb", "decrypt", "encrypt")

    def __init__(self, key: bytes) -> None:
        self.encrypt: Callable[[bytes], bytes]
        self.decrypt: Callable[[bytes], bytes]
        if _BACKEND == "cryptography":
            cipher = _openssl_ecb(key)
            self.encrypt = cipher.encryptor().update
            self.decrypt = cipher.decryptor().update
            return
        # The raw path reads this object's C state: it lives as long.
        self._ecb: Any = AES.new(key, AES.MODE_ECB)
        if _RAW_C is not None:
            state = self._ecb._state.get()
            self.encrypt = _raw_block(_RAW_C, _RAW_C.ecb_encrypt, state)
            self.decrypt = _raw_block(_RAW_C, _RAW_C.ecb_decrypt, state)
        else:
            self.encrypt = self._ecb.encrypt
            self.decrypt = self._ecb.decrypt


def _raw_block(raw: _RawC, function: Any, state: Any) -> Callable[[bytes], bytes]:
    """One block through pycryptodome's ECB C ``function`` on a key's state."""
    out = raw.ffi.new("uint8_t[]", _BLOCK)
    result = raw.ffi.buffer(out)

    def crypt(block: bytes) -> bytes:
        if len(block) != _BLOCK:
            raise LocalProtocolError(f"AES-ECB takes one {_BLOCK}-byte block")
        if function(state, raw.pointer(block), out, _BLOCK):
            raise LocalProtocolError("AES-ECB failed")
        return bytes(result)

    return crypt


def _openssl_ecb(key: bytes) -> Cipher[modes.ECB]:
    """AES-128-ECB on OpenSSL, imported here: ``cryptography`` is optional."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.ECB())


def aes_128_ecb(key: bytes) -> BlockCipher:
    """An AES-128 block cipher keyed once; callers keep one per user."""
    return BlockCipher(key)


class KeyScan:
    """One block decrypted under many keys at once: the auth-ID scan (spec 3.5).

    A first contact costs one decryption per user, so the per-user work is
    only the library call, made from C with ``map``: with ``cryptography``,
    its reused ECB contexts (about 0.32 µs a user); otherwise pycryptodome's
    ECB C function when pycryptodome runs on cffi (its Python wrapper costs
    more than the AES; about 0.43 µs), else each key's ``BlockCipher``. The
    scan keys its own ciphers, all made in one go: with 10 000 users, key
    schedules that lie together in memory take 3.2 ms where the same calls
    on the users' own ciphers, spread between other objects, take 5.5.
    """

    __slots__ = ("_decrypt", "_states")

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._decrypt: Callable[[bytes], bytes]
        # The C path reads these through raw pointers: they live as long.
        self._states: list[Any] = []
        if _BACKEND == "pycryptodome" and _RAW_C is not None:
            self._states = [AES.new(key, AES.MODE_ECB) for key in keys]
            self._decrypt = _raw_ecb_scan(_RAW_C, self._states)
            return
        calls = (
            [_openssl_ecb(key).decryptor().update for key in keys]
            if _BACKEND == "cryptography"
            else [aes_128_ecb(key).decrypt for key in keys]
        )
        self._decrypt = lambda block: b"".join(
            map(operator.call, calls, itertools.repeat(block, len(calls)))
        )

    def decrypt(self, block: bytes) -> bytes:
        """``block`` decrypted under every key, 16 bytes each, in order."""
        return self._decrypt(block)


def _raw_ecb_scan(raw: _RawC, ecbs: Sequence[Any]) -> Callable[[bytes], bytes]:
    """pycryptodome's ECB decryption under each of ``ecbs`` (its ECB
    objects), called from ``map`` into one buffer."""
    states = [ecb._state.get() for ecb in ecbs]
    count = len(states)
    out = raw.ffi.new("uint8_t[]", _BLOCK * count)
    slots = [out + _BLOCK * index for index in range(count)]

    def decrypt(block: bytes) -> bytes:
        calls = map(
            raw.ecb_decrypt,
            states,
            itertools.repeat(raw.pointer(block), count),
            slots,
            itertools.repeat(_BLOCK, count),
        )
        if any(calls):
            raise LocalProtocolError("AES-ECB failed")
        return bytes(raw.ffi.buffer(out))

    return decrypt


class StreamCipher:
    """Full-block AES-128-CFB as Go implements it, continuing across calls.

    One object serves one direction, so it is either an encryptor or a
    decryptor; the first call decides which.
    """

    __slots__ = ("_cipher", "_iv", "_key", "_mode")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._key = key
        self._iv = iv
        self._cipher = AES.new(key, AES.MODE_CFB, iv=iv, segment_size=128)
        self._mode = ""

    def _check(self, mode: str) -> None:
        if self._mode != mode:
            if self._mode:
                raise LocalProtocolError("a CFB stream cannot both encrypt and decrypt")
            self._mode = mode

    def encrypt(self, data: Buffer) -> bytes:
        self._check("encrypt")
        return bytes(self._cipher.encrypt(data))

    def decrypt(self, data: Buffer) -> bytes:
        self._check("decrypt")
        return bytes(self._cipher.decrypt(data))


def aes_128_cfb(key: bytes, iv: bytes) -> StreamCipher:
    """AES-128-CFB with 128-bit segments (pycryptodome defaults to 8)."""
    return StreamCipher(key, iv)


_XOF_BLOCK = 256
# hashlib's part: the padding and masks of 16 chunks, little memory to hold.
_XOF_FIRST = 64


class Xof:
    """SHAKE128 output read incrementally, in the same order as Go's reader.

    Reading from pycryptodome costs a few microseconds per call whatever the
    size, and VMess draws 2 bytes per chunk, so bytes are squeezed in blocks
    and handed out from a buffer; the stream is the same. The first bytes
    come from hashlib, six times cheaper to set up, which is all most
    connections use; pycryptodome's reader continues it when needed.
    """

    __slots__ = ("_buffer", "_offset", "_seed", "_shake")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._shake: Any = None
        self._buffer = hashlib.shake_128(seed).digest(_XOF_FIRST)
        self._offset = 0

    def read(self, n: int) -> bytes:
        end = self._offset + n
        if end > len(self._buffer):
            if self._shake is None:
                self._shake = SHAKE128.new(self._seed)
                self._shake.read(_XOF_FIRST)  # the bytes hashlib gave
            rest = self._buffer[self._offset :]
            self._buffer = rest + self._shake.read(max(_XOF_BLOCK, n))
            self._offset, end = 0, n
        out = self._buffer[self._offset : end]
        self._offset = end
        return out


def shake128(seed: bytes) -> Xof:
    """A SHAKE128 stream seeded with ``seed`` (spec section 6.2)."""
    return Xof(seed)
