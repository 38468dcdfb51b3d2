"""The cipher layer: both AEAD backends byte for byte, CFB and SHAKE as Go does.

pycryptodome is the required backend and ``cryptography`` the optional fast
one; whichever is installed, VMess peers must see the same bytes, so every
construction is compared against pycryptodome's reference objects.
"""

from __future__ import annotations

import pytest
from Crypto.Cipher import AES, ChaCha20_Poly1305
from Crypto.Hash import SHAKE128
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrio.errors import LocalProtocolError, RemoteProtocolError
from vtrio.protocol import ciphers

pytest.importorskip("cryptography")

BACKENDS: list[type[ciphers._PyCryptodomeAEAD] | type[ciphers._OpenSSLAEAD]] = [
    ciphers._PyCryptodomeAEAD,
    ciphers._OpenSSLAEAD,
]


def raw_c() -> ciphers._RawC:
    assert ciphers._RAW_C is not None
    return ciphers._RAW_C


def reference(chacha: bool, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    cipher = (
        ChaCha20_Poly1305.new(key=key, nonce=nonce)
        if chacha
        else AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    )
    cipher.update(aad)
    sealed, tag = cipher.encrypt_and_digest(data)
    return bytes(sealed + tag)


@settings(max_examples=150, deadline=None)
@given(
    chacha=st.booleans(),
    key16=st.binary(min_size=16, max_size=16),
    key32=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    data=st.binary(max_size=17000),
    aad=st.binary(max_size=40),
)
def test_both_backends_match_the_reference(
    chacha: bool, key16: bytes, key32: bytes, nonce: bytes, data: bytes, aad: bytes
) -> None:
    key = key32 if chacha else key16
    expected = reference(chacha, key, nonce, data, aad)
    aeads: list[ciphers.AEAD] = [backend(key, chacha) for backend in BACKENDS]
    if chacha:
        aeads.append(ciphers._RawChaCha20Poly1305(key, raw_c()))
    else:
        aeads.append(ciphers._CounterGCM(key, raw_c()))
    for aead in aeads:
        assert aead.seal(nonce, data, aad) == expected
        assert aead.open(nonce, expected, aad) == data
        if not aad:
            out = bytearray(len(data) + 16)
            aead.seal_into(nonce, data, memoryview(out))
            assert out == expected


@pytest.mark.parametrize("backend", BACKENDS, ids=["pycryptodome", "cryptography"])
@pytest.mark.parametrize("chacha", [False, True], ids=["gcm", "chacha"])
def test_tampering_and_truncation_are_typed_errors(
    backend: type[ciphers._PyCryptodomeAEAD] | type[ciphers._OpenSSLAEAD],
    chacha: bool,
) -> None:
    key, nonce = bytes(range(32 if chacha else 16)), bytes(12)
    aead = backend(key, chacha)
    sealed = aead.seal(nonce, b"payload", b"aad")
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(RemoteProtocolError):
            aead.open(nonce, bytes(tampered), b"aad")
    for size in range(16):
        with pytest.raises(RemoteProtocolError):
            aead.open(nonce, sealed[:size], b"aad")
    with pytest.raises(RemoteProtocolError):
        aead.open(nonce, sealed, b"other aad")


@given(data=st.lists(st.binary(max_size=100), max_size=20))
def test_cfb_is_one_stream_across_calls(data: list[bytes]) -> None:
    key, iv = bytes(range(16)), bytes(range(16, 32))
    whole = b"".join(data)
    expected = AES.new(key, AES.MODE_CFB, iv=iv, segment_size=128).encrypt(whole)
    encryptor = ciphers.aes_128_cfb(key, iv)
    assert b"".join(encryptor.encrypt(part) for part in data) == expected
    decryptor = ciphers.aes_128_cfb(key, iv)
    assert decryptor.decrypt(expected) == whole


@given(reads=st.lists(st.integers(0, 600), max_size=30))
def test_buffered_shake_reads_like_the_plain_xof(reads: list[int]) -> None:
    seed = b"vmess iv 16 byte"
    plain = SHAKE128.new(seed)
    buffered = ciphers.shake128(seed)
    for size in reads:
        assert buffered.read(size) == plain.read(size)


@pytest.mark.parametrize("chacha", [False, True], ids=["gcm", "chacha"])
def test_the_raw_pycryptodome_aeads_refuse_tampering(chacha: bool) -> None:
    aead: ciphers.AEAD = (
        ciphers._RawChaCha20Poly1305(bytes(range(32)), raw_c())
        if chacha
        else ciphers._CounterGCM(bytes(range(16)), raw_c())
    )
    nonce = bytes(12)
    sealed = aead.seal(nonce, b"payload" * 100, b"aad")
    for index in (0, 5, len(sealed) - 17, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x80
        with pytest.raises(RemoteProtocolError):
            aead.open(nonce, bytes(tampered), b"aad")
    with pytest.raises(RemoteProtocolError):
        aead.open(nonce, sealed[:15])


def test_the_pycryptodome_backend_uses_the_per_key_gcm() -> None:
    """Guards the fast path against a pycryptodome that moved its internals."""
    assert ciphers._RAW_C is not None


def test_backend_name_is_one_of_the_two() -> None:
    assert ciphers.backend_name() in ("pycryptodome", "cryptography")


@pytest.mark.parametrize("backend", ["pycryptodome", "cryptography"])
def test_block_cipher_matches_pycryptodome_ecb(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ciphers, "_BACKEND", backend)
    for n in range(8):
        key, block = bytes([n]) * 16, bytes(range(n, n + 16))
        cipher = ciphers.aes_128_ecb(key)
        reference = AES.new(key, AES.MODE_ECB)
        assert cipher.encrypt(block) == reference.encrypt(block)
        assert cipher.decrypt(block) == reference.decrypt(block)
        assert cipher.decrypt(cipher.encrypt(block)) == block


def test_the_raw_block_cipher_takes_exactly_one_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pycryptodome's C function would read past a short buffer."""
    monkeypatch.setattr(ciphers, "_BACKEND", "pycryptodome")
    cipher = ciphers.aes_128_ecb(bytes(16))
    for size in (0, 15, 17, 32):
        with pytest.raises(LocalProtocolError):
            cipher.decrypt(bytes(size))
        with pytest.raises(LocalProtocolError):
            cipher.encrypt(bytes(size))


@pytest.mark.parametrize("backend", ["pycryptodome", "cryptography"])
def test_key_scan_decrypts_under_every_key_in_order(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ciphers, "_BACKEND", backend)
    keys = [bytes([n]) * 16 for n in range(40)]
    probe = bytes(range(16))
    expected = b"".join(AES.new(key, AES.MODE_ECB).decrypt(probe) for key in keys)
    scan = ciphers.KeyScan(keys)
    assert scan.decrypt(probe) == expected
    assert scan.decrypt(probe) == expected  # the contexts are reused
    # pycryptodome's ECB C function directly (it guards the 10 000-user
    # handshake against pycryptodome moving internals); OpenSSL's contexts.
    assert bool(scan._states) == (backend == "pycryptodome")
    assert ciphers.KeyScan([]).decrypt(probe) == b""
