"""QUIC client Initial packets for the sniffer's tests, protected as RFC 9001
5 says (checked against its Appendix A.2 packet in tests/protocol/test_quic.py).
"""

from __future__ import annotations

from Crypto.Cipher import AES

from vtrio.protocol.quic import VERSION_1, VERSIONS, initial_keys

CRYPTO_FRAME = 0x06
INITIAL_SIZE = 1200  # the least a client's Initial datagram may be (RFC 9000 14.1)


def varint(value: int) -> bytes:
    """A QUIC variable-length integer in its shortest form."""
    if value < 1 << 6:
        return value.to_bytes(1)
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2)
    return (value | 0x80000000).to_bytes(4)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return bytes((CRYPTO_FRAME,)) + varint(offset) + varint(len(data)) + data


def client_initial(
    frames: bytes,
    *,
    connection_id: bytes = bytes.fromhex("8394c8f03e515708"),
    number: int = 2,
    version: int = VERSION_1,
    size: int = INITIAL_SIZE,
) -> bytes:
    """One protected Initial packet carrying ``frames``, padded to ``size``
    bytes (no source connection ID, no token, a 4-byte packet number)."""
    key, iv, hp = initial_keys(version, connection_id)
    head = (
        bytes((0xC3 | VERSIONS[version].initial_type << 4,))
        + version.to_bytes(4)
        + bytes((len(connection_id),))
        + connection_id
        + b"\x00\x00"  # source connection ID, token
    )
    length = size - len(head) - 2
    header = head + (length | 0x4000).to_bytes(2) + number.to_bytes(4)
    payload = frames.ljust(length - 4 - 16, b"\x00")
    nonce = bytes(a ^ b for a, b in zip(iv, number.to_bytes(12), strict=True))
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(header)
    sealed, tag = cipher.encrypt_and_digest(payload)
    packet = bytearray(header + sealed + tag)
    number_at = len(header) - 4
    mask = AES.new(hp, AES.MODE_ECB).encrypt(
        bytes(packet[number_at + 4 : number_at + 20])
    )
    packet[0] ^= mask[0] & 0x0F
    for index in range(4):
        packet[number_at + index] ^= mask[1 + index]
    return bytes(packet)
