"""The server name in a QUIC client's first packets (sniffing's ``quic``).

Theory of operation: a QUIC connection opens with Initial packets whose keys
anyone can derive from the packet's own destination connection ID (RFC 9001
5.2), so the TLS ClientHello they carry in CRYPTO frames is readable on the
way, as Xray's sniffer reads it. :func:`sniff_quic` takes the datagrams a flow
has sent so far, one after the other (each QUIC long-header packet states its
length, so packets coalesced in one datagram and packets of several datagrams
read alike), removes header protection and decrypts each Initial of QUIC v1,
v2 or draft-29, gathers the CRYPTO data by offset and reads the ClientHello's
server name once it is whole: a ClientHello with post-quantum key shares
spans two packets. Other long-header packets (0-RTT, Handshake) are skipped;
a short-header packet, another version, a frame an Initial may not carry or
a packet that does not decrypt says "not QUIC".
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

from Crypto.Cipher import AES

from vtrio.protocol.sniff import MORE, Sniffed, Verdict, client_hello_name

VERSION_1 = 0x00000001
DRAFT_29 = 0xFF00001D
VERSION_2 = 0x6B3343CF


class _Version(NamedTuple):
    salt: bytes  # initial_salt
    labels: bytes  # the prefix of the key, iv and hp labels
    initial_type: int  # the long-header type bits of an Initial


VERSIONS = {
    # RFC 9001 5.2, draft-29, RFC 9369 3.3 (v2 renumbers the packet types).
    VERSION_1: _Version(
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0
    ),
    DRAFT_29: _Version(
        bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), b"quic ", 0
    ),
    VERSION_2: _Version(
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 1
    ),
}
LONG_HEADER = 0x80
FIXED_BIT = 0x40
TAG_SIZE = 16
SAMPLE_SIZE = 16
# A ClientHello fits in far less; Xray reads at most this much CRYPTO data.
MAX_CRYPTO = 32767
TLS_CLIENT_HELLO = 1

_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO, _CONNECTION_CLOSE = 0, 1, 2, 3, 6, 0x1C


class NotQuic(ValueError):
    """The bytes are not (or no longer) a QUIC client's Initial packets."""


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label with an empty context, for up to one
    SHA-256 block of output (all QUIC's initial keys need)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


def initial_keys(version: int, connection_id: bytes) -> tuple[bytes, bytes, bytes]:
    """The client's Initial (key, iv, header protection key) for a
    destination connection ID (RFC 9001 5.2, RFC 9369 3.3)."""
    salt, labels, _ = VERSIONS[version]
    initial = hmac.digest(salt, connection_id, "sha256")
    client = _expand_label(initial, b"client in", hashlib.sha256().digest_size)
    return (
        _expand_label(client, labels + b"key", 16),
        _expand_label(client, labels + b"iv", 12),
        _expand_label(client, labels + b"hp", 16),
    )


def _varint(data: bytes | bytearray, offset: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``offset``, and the offset after it."""
    if offset >= len(data):
        raise NotQuic("truncated variable-length integer")
    size = 1 << (data[offset] >> 6)
    if offset + size > len(data):
        raise NotQuic("truncated variable-length integer")
    value = int.from_bytes(data[offset : offset + size]) & ((1 << (8 * size - 2)) - 1)
    return value, offset + size


def _initial_payload(
    packet: bytearray, header_end: int, end: int, keys: tuple[bytes, bytes, bytes]
) -> bytes:
    """The decrypted frames of the Initial ``packet[:end]`` whose packet number
    starts at ``header_end``; header protection removed in place."""
    key, iv, hp = keys
    if header_end + 4 + SAMPLE_SIZE > end:
        raise NotQuic("an Initial too short to sample")
    sample = bytes(packet[header_end + 4 : header_end + 4 + SAMPLE_SIZE])
    mask = AES.new(hp, AES.MODE_ECB).encrypt(sample)
    packet[0] ^= mask[0] & 0x0F
    number_size = (packet[0] & 0x03) + 1
    for index in range(number_size):
        packet[header_end + index] ^= mask[1 + index]
    number = bytes(packet[header_end : header_end + number_size])
    nonce = bytes(a ^ b for a, b in zip(iv, number.rjust(len(iv), b"\0"), strict=True))
    body_start = header_end + number_size
    if body_start + TAG_SIZE > end:
        raise NotQuic("an Initial without room for its tag")
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(bytes(packet[:body_start]))
    try:
        return cipher.decrypt_and_verify(
            bytes(packet[body_start : end - TAG_SIZE]),
            bytes(packet[end - TAG_SIZE : end]),
        )
    except ValueError as exc:
        raise NotQuic("an Initial that does not decrypt") from exc


def _gather_crypto(frames: bytes, crypto: bytearray, filled: bytearray) -> None:
    """Copy the CRYPTO frames of an Initial into ``crypto`` at their offsets,
    marking the bytes they fill in ``filled``."""
    offset = 0
    while offset < len(frames):
        kind = frames[offset]
        offset += 1
        if kind in (_PADDING, _PING):
            continue
        if kind in (_ACK, _ACK_ECN):
            _, offset = _varint(frames, offset)  # largest acknowledged
            _, offset = _varint(frames, offset)  # delay
            ranges, offset = _varint(frames, offset)
            _, offset = _varint(frames, offset)  # first range
            for _ in range(2 * ranges + (3 if kind == _ACK_ECN else 0)):
                _, offset = _varint(frames, offset)
        elif kind == _CRYPTO:
            start, offset = _varint(frames, offset)
            length, offset = _varint(frames, offset)
            if offset + length > len(frames) or start + length > MAX_CRYPTO:
                raise NotQuic("a CRYPTO frame out of bounds")
            if len(crypto) < start + length:
                crypto.extend(bytes(start + length - len(crypto)))
                filled.extend(bytes(start + length - len(filled)))
            crypto[start : start + length] = frames[offset : offset + length]
            filled[start : start + length] = b"\x01" * length
            offset += length
        elif kind == _CONNECTION_CLOSE:
            _, offset = _varint(frames, offset)  # error code
            _, offset = _varint(frames, offset)  # frame type
            length, offset = _varint(frames, offset)
            offset += length
        else:
            raise NotQuic(f"frame type {kind:#x} in an Initial")
    if offset > len(frames):
        raise NotQuic("a truncated frame")


def client_crypto(data: bytes) -> bytes:
    """The CRYPTO data of the Initial packets in ``data``, from its start up
    to the first byte no packet has carried yet (clients send the frames in
    any order).

    Raises:
        NotQuic: ``data`` is not a run of a QUIC client's long-header packets.
    """
    crypto, filled = bytearray(), bytearray()
    offset = 0
    keys: dict[tuple[int, bytes], tuple[bytes, bytes, bytes]] = {}
    while offset < len(data):
        first = data[offset]
        if not first & LONG_HEADER or not first & FIXED_BIT or offset + 6 > len(data):
            raise NotQuic("not a QUIC long-header packet")
        version = int.from_bytes(data[offset + 1 : offset + 5])
        if version not in VERSIONS:
            raise NotQuic(f"QUIC version {version:#x}")
        cursor = offset + 5
        id_length = data[cursor]
        connection_id = data[cursor + 1 : cursor + 1 + id_length]
        cursor += 1 + id_length
        if cursor >= len(data) or id_length > 20:
            raise NotQuic("a bad connection ID")
        cursor += 1 + data[cursor]  # the source connection ID
        initial = (first >> 4) & 0x03 == VERSIONS[version].initial_type
        if initial:
            token_length, cursor = _varint(data, cursor)
            cursor += token_length
        length, cursor = _varint(data, cursor)
        end = cursor + length
        if end > len(data):
            raise NotQuic("a packet longer than its datagram")
        if initial:
            packet = bytearray(data[offset:end])
            secrets = keys.get((version, connection_id))
            if secrets is None:
                secrets = keys[version, connection_id] = initial_keys(
                    version, connection_id
                )
            frames = _initial_payload(packet, cursor - offset, end - offset, secrets)
            _gather_crypto(frames, crypto, filled)
        offset = end
    gap = filled.find(0)
    return bytes(crypto if gap < 0 else crypto[:gap])


def sniff_quic(data: bytes) -> Verdict:
    """The server name of the ClientHello in a QUIC client's first packets
    (``data``: its datagrams so far, one after the other); MORE while the
    ClientHello is not whole."""
    if not data:
        return None
    try:
        crypto = client_crypto(data)
    except NotQuic:
        return None
    if len(crypto) < 4:
        return MORE
    if crypto[0] != TLS_CLIENT_HELLO:
        return None
    size = 4 + int.from_bytes(crypto[1:4])
    if len(crypto) < size:
        return MORE
    found = client_hello_name(memoryview(crypto)[:size])
    return Sniffed("quic", found.domain if found is not None else "")
