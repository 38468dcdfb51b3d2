"""The legacy (MD5) header's authentication and the server's time-hash table (spec 2).

Theory of operation: a legacy client sends ``HMAC-MD5(id, BE64(ts))`` in
clear, where ``id`` is the primary ID or one of its alter IDs and ``ts`` is
its clock with +-30 s of jitter. The timestamp is never sent, so the server
precomputes that HMAC for every ID of every legacy user and every second in
``[now - 120, now + 120]``, and looks the 16 bytes up. The table is one dict
plus a per-second index: as ``now`` advances, the new seconds are hashed and
the seconds that fell out of the window are deleted, so the table stays at
``241 * IDs`` entries. A burnt entry (taint fuse, spec 2.4) stays in the table
but never matches again.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass, field

from vtrio.errors import LocalProtocolError
from vtrio.protocol.ids import alter_ids

WINDOW = 120
# Entries across all users: (1 + alterId) * 241 each. Beyond this, add() refuses.
MAX_ENTRIES = 2_000_000


def legacy_auth(user_id: uuid.UUID, timestamp: int) -> bytes:
    """The 16 bytes that open a legacy header: HMAC-MD5 keyed with the ID."""
    return hmac.digest(user_id.bytes, struct.pack(">Q", timestamp), hashlib.md5)


def legacy_iv(timestamp: int) -> bytes:
    """The CFB IV of the legacy instruction: MD5 of the timestamp four times."""
    return hashlib.md5(struct.pack(">Q", timestamp) * 4).digest()


@dataclass(slots=True)
class LegacyHit:
    """A table entry: whose ID, which second, and the taint fuse."""

    owner: uuid.UUID
    timestamp: int
    burnt: bool = False


@dataclass(slots=True)
class _Identity:
    ids: list[uuid.UUID]
    keys: set[bytes] = field(default_factory=set)


class LegacyTable:
    """HMAC-MD5(ID, t) -> (user, t) for every legacy ID and t in now +- 120 s."""

    def __init__(self) -> None:
        self._entries: dict[bytes, LegacyHit] = {}
        self._by_second: dict[int, list[bytes]] = {}
        self._identities: dict[uuid.UUID, _Identity] = {}
        # The seconds currently hashed, inclusive; None while empty.
        self._low: int | None = None
        self._high: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, user_id: uuid.UUID, alter_id: int, now: int) -> None:
        """Hash the primary ID and ``alter_id`` alter IDs of a user.

        Raises:
            LocalProtocolError: the table would exceed :data:`MAX_ENTRIES`.
        """
        ids = [user_id, *alter_ids(user_id, alter_id)]
        if len(self._entries) + len(ids) * (2 * WINDOW + 1) > MAX_ENTRIES:
            raise LocalProtocolError("legacy table full: too many alter IDs")
        self.remove(user_id)
        self._identities[user_id] = _Identity(ids)
        if self._low is None or self._high is None:
            self._low, self._high = now - WINDOW, now + WINDOW
        for second in range(self._low, self._high + 1):
            self._hash_second(second, user_id)

    def remove(self, user_id: uuid.UUID) -> None:
        """Forget a user's entries (the per-second index tolerates the gaps)."""
        identity = self._identities.pop(user_id, None)
        if identity is not None:
            for key in identity.keys:
                self._entries.pop(key, None)

    def lookup(self, auth: bytes, now: int) -> LegacyHit | None:
        """The entry for these 16 bytes, unless unknown or burnt."""
        self.advance(now)
        hit = self._entries.get(auth)
        if hit is None or hit.burnt:
            return None
        return hit

    def advance(self, now: int) -> None:
        """Move the window to ``now``: hash new seconds, drop old ones."""
        if self._low is None or self._high is None:
            return
        low, high = now - WINDOW, now + WINDOW
        if high < self._low or low > self._high:
            self._drop_seconds(self._low, self._high)
            self._low, self._high = low, low - 1  # empty: rehash all below
        self._drop_seconds(self._low, min(low - 1, self._high))
        self._drop_seconds(max(high + 1, self._low), self._high)
        for second in range(self._high + 1, high + 1):
            for user_id in self._identities:
                self._hash_second(second, user_id)
        for second in range(low, self._low):  # the clock went back
            for user_id in self._identities:
                self._hash_second(second, user_id)
        self._low, self._high = low, high

    def _drop_seconds(self, first: int, last: int) -> None:
        for second in range(first, last + 1):
            for key in self._by_second.pop(second, ()):
                hit = self._entries.pop(key, None)
                if hit is not None:
                    self._identities[hit.owner].keys.discard(key)

    def _hash_second(self, second: int, user_id: uuid.UUID) -> None:
        identity = self._identities[user_id]
        bucket = self._by_second.setdefault(second, [])
        for one_id in identity.ids:
            key = legacy_auth(one_id, second)
            self._entries[key] = LegacyHit(user_id, second)
            identity.keys.add(key)
            bucket.append(key)
