"""The encrypted auth ID (EAuID) and the replay memory (spec 3.2, 3.6).

Theory of operation: the client encrypts one AES block holding the time, four
random bytes and a CRC32 of both under a key derived from its cmdKey. The
server tries every user's key (one ECB decryption each) until the CRC fits.
Seen EAuIDs are remembered in two rotating sets: when ``interval`` seconds
have passed, the older set is dropped and the current one becomes the older,
so an entry lives between one and two intervals, in bounded memory.
"""

from __future__ import annotations

import functools
import struct
import zlib
from typing import TYPE_CHECKING

from vtrio.protocol.ciphers import aes_128_ecb
from vtrio.protocol.kdf import kdf16

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from vtrio.protocol.ciphers import BlockCipher

AUTH_ID_SALT = b"AES Auth ID Encryption"
AUTH_ID_LENGTH = 16
# |t - now| may be at most this many seconds (spec 3.2).
TIME_WINDOW = 120


def auth_id_key(cmd_key: bytes) -> bytes:
    """The AES-128 key of a user's auth IDs."""
    return kdf16(cmd_key, AUTH_ID_SALT)


@functools.lru_cache(maxsize=256)
def auth_id_cipher(cmd_key: bytes) -> BlockCipher:
    """A user's auth-ID cipher, kept: a client makes one EAuID per connection."""
    return aes_128_ecb(auth_id_key(cmd_key))


def make_auth_id(
    cipher: BlockCipher, now: int, random: Callable[[int], bytes]
) -> bytes:
    """A fresh EAuID for time ``now`` (no jitter: the server allows +-120 s)."""
    plain = struct.pack(">q", now) + random(4)
    return bytes(cipher.encrypt(plain + struct.pack(">I", zlib.crc32(plain))))


def auth_id_time(cipher: BlockCipher, eauid: bytes) -> int | None:
    """The timestamp inside ``eauid`` if this key's CRC fits, else None."""
    plain = cipher.decrypt(eauid)
    (checksum,) = struct.unpack_from(">I", plain, 12)
    if zlib.crc32(plain[:12]) != checksum:
        return None
    (timestamp,) = struct.unpack_from(">q", plain)
    return int(timestamp)


class RotatingSet:
    """Remembers keys for ``interval`` to ``2 * interval`` seconds.

    When the current set holds ``capacity`` keys it rotates early, which
    shortens the memory under a flood instead of growing without bound.
    """

    def __init__(self, interval: int, capacity: int) -> None:
        self._interval = interval
        self._capacity = capacity
        self._current: set[Hashable] = set()
        self._older: set[Hashable] = set()
        self._rotated_at: int | None = None

    def __len__(self) -> int:
        return len(self._current) + len(self._older)

    def add_if_new(self, key: Hashable, now: int) -> bool:
        """Remember ``key``; False if it was already remembered."""
        if self._rotated_at is None:
            self._rotated_at = now
        elapsed = now - self._rotated_at
        if elapsed >= 2 * self._interval:
            self._rotate(now)  # both generations are stale
            self._rotate(now)
        elif elapsed >= self._interval:
            self._rotate(now)
        if key in self._current or key in self._older:
            return False
        if len(self._current) >= self._capacity:
            self._rotate(now)
        self._current.add(key)
        return True

    def _rotate(self, now: int) -> None:
        self._older = self._current
        self._current = set()
        self._rotated_at = now
