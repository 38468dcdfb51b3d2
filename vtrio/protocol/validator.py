"""The users of one VMess inbound, and everything a server checks them with.

Theory of operation: one :class:`UserValidator` is shared by every connection
of an inbound. For each user it keeps the cmdKey and a ready AES-ECB object
for the auth ID, so a handshake costs one block decryption per user and no key
schedule (spec 3.5). It also owns the legacy time-hash table (spec 2.3), the
EAuID replay memory (spec 3.6), the 3-minute session history of both header
modes (spec 2.4) and the per-server drain size (spec 9.1). Users can be added
and removed while connections run (reload, dynamic ports). Nothing here reads
a clock: every call that needs the time takes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vtrio.config.model import VMessUser
from vtrio.errors import AuthenticationError
from vtrio.protocol.auth_id import TIME_WINDOW, RotatingSet, auth_id_key
from vtrio.protocol.ciphers import BlockCipher, KeyScan, aes_128_ecb
from vtrio.protocol.ids import cmd_key
from vtrio.protocol.legacy import LegacyTable

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable, Iterator

    from vtrio.protocol.legacy import LegacyHit

# v2ray's cuckoo filters hold 100 000 IDs per generation; so do these sets.
REPLAY_CAPACITY = 100_000
# An EAuID stays acceptable for up to 240 s of server time (t - 120 .. t + 120
# with t up to 120 s ahead), so it is remembered 240 to 480 s (spec 3.6);
# v2ray's 120 s generations leave a window where a replay passes.
AUTH_ID_MEMORY = 2 * TIME_WINDOW
SESSION_HISTORY_SECONDS = 180
# Users matched lately, tried before the full scan.
RECENT_USERS = 256
# Drain target = 16 + 38 + base + jitter, base in 0..3265, jitter < spread <= 64.
DRAIN_FOUNDATION = 16 + 38
DRAIN_BASE_RANGE = 3266
DRAIN_SPREAD_RANGE = 64
# The top four bytes of BE64(t) for |t| < 2**32 s (until the year 2106).
_HIGH_TIME_BYTES = frozenset({bytes(4), b"\xff" * 4})


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A configured user with the keys derived from it once."""

    user: VMessUser
    cmd_key: bytes
    auth_id_key: bytes
    auth_id_cipher: BlockCipher

    @classmethod
    def of(cls, user: VMessUser) -> UserRecord:
        """Derive the cmdKey and the auth-ID key and cipher of ``user`` once."""
        key = cmd_key(user.id)
        id_key = auth_id_key(key)
        return cls(user, key, id_key, aes_128_ecb(id_key))


class UserValidator:
    """Users, key tables and replay memory of one inbound."""

    def __init__(self, users: Iterable[VMessUser] = (), *, now: int) -> None:
        """Args:
        users: the configured users (``model.VMessUser``).
        now: Unix seconds, where the legacy table's window starts.

        Raises:
            LocalProtocolError: the legacy table would be too large.
        """
        self._records: dict[uuid.UUID, UserRecord] = {}
        self._legacy = LegacyTable()
        self._auth_ids = RotatingSet(AUTH_ID_MEMORY, REPLAY_CAPACITY)
        self._sessions = RotatingSet(SESSION_HISTORY_SECONDS, REPLAY_CAPACITY)
        self._drain_seed: int | None = None
        # Most recently matched last; at most RECENT_USERS entries.
        self._recent: dict[uuid.UUID, UserRecord] = {}
        # Every record and its auth-ID keys in one scan; rebuilt after changes.
        self._scan: tuple[list[UserRecord], KeyScan] | None = None
        for user in users:
            self.add(user, now=now)

    @property
    def users(self) -> tuple[VMessUser, ...]:
        """The current users, in the order they were added."""
        return tuple(record.user for record in self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def add(self, user: VMessUser, *, now: int) -> None:
        """Add or replace a user (same ``id`` replaces).

        Raises:
            LocalProtocolError: the legacy table would be too large.
        """
        if user.alter_id > 0:
            self._legacy.add(user.id, user.alter_id, now)
        else:
            self._legacy.remove(user.id)
        self._records[user.id] = UserRecord.of(user)
        self._recent.pop(user.id, None)
        self._scan = None

    def remove(self, user_id: uuid.UUID) -> None:
        """Forget a user; unknown IDs are ignored."""
        self._records.pop(user_id, None)
        self._recent.pop(user_id, None)
        self._legacy.remove(user_id)
        self._scan = None

    def find_by_email(self, email: str) -> VMessUser | None:
        """The user with this e-mail, compared case-insensitively (spec 8.1)."""
        wanted = email.lower()
        for record in self._records.values():
            if record.user.email.lower() == wanted:
                return record.user
        return None

    def match_auth_id(self, eauid: bytes, now: int) -> UserRecord:
        """The user whose key opens this EAuID with a fresh time (v2ray's scan).

        A user whose CRC fits but whose time is out of the +-120 s window does
        not end the search: another user may fit (spec 3.5).

        Raises:
            AuthenticationError: no user fits (the reason tells skew from an
                unknown user), or the EAuID was seen before.
        """
        skew: int | None = None
        for record, plain in self._candidates(eauid):
            if plain[:4] not in _HIGH_TIME_BYTES or zlib.crc32(
                plain[:12]
            ) != int.from_bytes(plain[12:]):
                continue
            timestamp = int.from_bytes(plain[:8], signed=True)
            if timestamp < 0 or abs(timestamp - now) > TIME_WINDOW:
                skew = timestamp - now
                continue
            if not self._auth_ids.add_if_new(eauid, now):
                raise AuthenticationError("replayed auth ID")
            self._remember(record)
            return record
        if skew is not None:
            raise AuthenticationError(f"auth ID timestamp {skew:+d} s off")
        raise AuthenticationError("unknown user")

    def _candidates(self, eauid: bytes) -> Iterator[tuple[UserRecord, bytes]]:
        """Users and their decryption of ``eauid``, the likely ones first.

        Users seen lately come first, one by one: a busy server with many
        idle accounts then decrypts one block per handshake instead of one
        per user. Then every user at once (a first contact), of which only
        the blocks that start like a timestamp can hold a valid auth ID.
        """
        for record in reversed(self._recent.values()):
            yield record, record.auth_id_cipher.decrypt(eauid)
        records, scan = self._full_scan()
        plains = scan.decrypt(eauid)
        for index in _time_prefixed_blocks(plains):
            yield records[index], plains[index * 16 : index * 16 + 16]

    def _full_scan(self) -> tuple[list[UserRecord], KeyScan]:
        if self._scan is None:
            records = list(self._records.values())
            scan = KeyScan([record.auth_id_key for record in records])
            self._scan = (records, scan)
        return self._scan

    def _remember(self, record: UserRecord) -> None:
        self._recent.pop(record.user.id, None)
        self._recent[record.user.id] = record
        if len(self._recent) > RECENT_USERS:
            del self._recent[next(iter(self._recent))]

    def match_legacy(
        self, auth: bytes, now: int
    ) -> tuple[UserRecord, LegacyHit] | None:
        """The user and table entry of a legacy header's 16 auth bytes."""
        hit = self._legacy.lookup(auth, now)
        if hit is None:
            return None
        record = self._records.get(hit.owner)
        return None if record is None else (record, hit)

    def record_session(
        self, user_id: uuid.UUID, key: bytes, iv: bytes, now: int
    ) -> bool:
        """Remember (user, ReqKey, ReqIV) for 3 minutes; False on a repeat."""
        return self._sessions.add_if_new((user_id.bytes, key, iv), now)

    def drain_size(self, random: Callable[[int], bytes]) -> int:
        """Bytes to read in all after a failed handshake (spec 9.1).

        Stable per server (seeded by the users present at the first failure)
        plus a small jitter per connection: 54 to 3382.
        """
        if self._drain_seed is None:
            digest = hashlib.sha256()
            for user_id in self._records:
                digest.update(hmac.digest(b"VMESSBSKDF", user_id.bytes, hashlib.sha256))
            self._drain_seed = int.from_bytes(digest.digest()[:8])
        base = self._drain_seed % DRAIN_BASE_RANGE
        spread = (self._drain_seed // DRAIN_BASE_RANGE) % DRAIN_SPREAD_RANGE + 1
        jitter = int.from_bytes(random(2))
        return DRAIN_FOUNDATION + base + jitter % spread


def _time_prefixed_blocks(plains: bytes) -> list[int]:
    """Indexes of the 16-byte blocks that start like a timestamp within
    2**32 s of 1970; of random blocks, about one in 2**31 does, so the CRC
    is computed for the right user and almost never for another."""
    found = []
    for prefix in _HIGH_TIME_BYTES:
        at = plains.find(prefix)
        while at != -1:
            if at % 16 == 0:
                found.append(at // 16)
            at = plains.find(prefix, at + 1)
    return sorted(found)
