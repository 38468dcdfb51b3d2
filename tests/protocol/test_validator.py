"""The validator's tables: the legacy time-hash table as the clock moves,
the rotating replay memory, and the auth ID itself (spec 2.3, 3.2, 3.6)."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from vtrio.errors import AuthenticationError, LocalProtocolError
from vtrio.protocol.auth_id import RotatingSet, auth_id_key, make_auth_id
from vtrio.protocol.ciphers import aes_128_ecb
from vtrio.protocol.ids import alter_ids, cmd_key
from vtrio.protocol.legacy import MAX_ENTRIES, LegacyTable, legacy_auth
from vtrio.protocol.validator import UserRecord, UserValidator, _time_prefixed_blocks

from .helpers import FIXED_NOW, OTHER_ID, USER_ID, seeded_random, user


def test_legacy_table_covers_every_id_and_second_and_stays_bounded() -> None:
    table = LegacyTable()
    table.add(USER_ID, 3, FIXED_NOW)
    assert len(table) == 4 * 241
    ids = [USER_ID, *alter_ids(USER_ID, 3)]
    for one_id in ids:
        for t in (FIXED_NOW - 120, FIXED_NOW, FIXED_NOW + 120):
            hit = table.lookup(legacy_auth(one_id, t), FIXED_NOW)
            assert hit is not None
            assert (hit.owner, hit.timestamp) == (USER_ID, t)
        assert table.lookup(legacy_auth(one_id, FIXED_NOW + 121), FIXED_NOW) is None
    # One second later the window slid by one: same size, new edge.
    assert (
        table.lookup(legacy_auth(USER_ID, FIXED_NOW + 121), FIXED_NOW + 1) is not None
    )
    assert table.lookup(legacy_auth(USER_ID, FIXED_NOW - 120), FIXED_NOW + 1) is None
    assert len(table) == 4 * 241
    # A jump far ahead, and back again, still leaves exactly one window.
    for now in (FIXED_NOW + 100_000, FIXED_NOW + 50, FIXED_NOW):
        table.advance(now)
        assert len(table) == 4 * 241
        assert table.lookup(legacy_auth(ids[-1], now - 120), now) is not None
    table.remove(USER_ID)
    assert len(table) == 0


def test_legacy_table_refuses_to_grow_past_its_bound() -> None:
    with pytest.raises(LocalProtocolError):
        LegacyTable().add(USER_ID, MAX_ENTRIES // 241, FIXED_NOW)


def test_rotating_set_remembers_between_one_and_two_intervals() -> None:
    memory = RotatingSet(interval=120, capacity=10)
    assert memory.add_if_new(b"a", 0)
    assert not memory.add_if_new(b"a", 119)
    assert memory.add_if_new(b"b", 120)  # rotation: "a" is in the older set
    assert not memory.add_if_new(b"a", 200)
    assert memory.add_if_new(b"c", 240)  # second rotation drops "a"
    assert memory.add_if_new(b"a", 241)
    assert memory.add_if_new(b"z", 10_000)  # a long gap empties both
    assert len(memory) == 1


def test_rotating_set_is_bounded() -> None:
    memory = RotatingSet(interval=120, capacity=100)
    for n in range(1000):
        memory.add_if_new(n, 0)
    assert len(memory) <= 200


def test_auth_id_checks_time_and_crc_per_user() -> None:
    validator = UserValidator([user(), user(user_id=OTHER_ID)], now=FIXED_NOW)
    cipher = aes_128_ecb(auth_id_key(cmd_key(OTHER_ID)))
    eauid = make_auth_id(cipher, FIXED_NOW, seeded_random())
    assert validator.match_auth_id(eauid, FIXED_NOW + 120).user.id == OTHER_ID
    with pytest.raises(AuthenticationError, match="replayed"):
        validator.match_auth_id(eauid, FIXED_NOW)
    negative = make_auth_id(cipher, -5, seeded_random())
    with pytest.raises(AuthenticationError, match="timestamp"):
        validator.match_auth_id(negative, FIXED_NOW)
    assert validator.users == (user(), user(user_id=OTHER_ID))
    assert len(validator) == 2


def test_every_fresh_auth_id_is_admitted_however_many_came_before() -> None:
    # The replay memory is exact: v2ray 4.34's cuckoo filters (8-bit
    # fingerprints) refuse about 1 % of fresh IDs once some 40 000 came in
    # since their last reset, and drain those valid clients.
    validator = UserValidator([user()], now=FIXED_NOW)
    cipher = aes_128_ecb(auth_id_key(cmd_key(USER_ID)))
    random = seeded_random()
    matched = [
        validator.match_auth_id(
            make_auth_id(cipher, FIXED_NOW + second, random), FIXED_NOW + second
        ).user.id
        for second in range(50)
        for _ in range(1000)
    ]
    assert matched == [USER_ID] * 50_000  # a refusal would have raised


def test_find_by_email_is_case_insensitive() -> None:
    named = user(user_id=OTHER_ID).__class__(id=OTHER_ID, email="Alice@Example.com")
    validator = UserValidator([user(), named], now=FIXED_NOW)
    assert validator.find_by_email("alice@example.com") == named
    assert validator.find_by_email("bob@example.com") is None


class _SkewedKey:
    """Stands in for a user whose key happens to fit with a stale time."""

    def decrypt(self, block: bytes) -> bytes:
        plain = struct.pack(">q", FIXED_NOW - 500) + b"\x00" * 4
        return plain + struct.pack(">I", zlib.crc32(plain))


def test_crc_fit_with_a_bad_time_keeps_scanning_like_v2ray() -> None:
    skewed = user(user_id=OTHER_ID)
    validator = UserValidator([skewed, user()], now=FIXED_NOW)
    # Tried first as a recent user; the full scan's real key does not fit.
    record = UserRecord(skewed, b"", bytes(16), _SkewedKey())  # type: ignore[arg-type]
    validator._records[OTHER_ID] = validator._recent[OTHER_ID] = record
    cipher = aes_128_ecb(auth_id_key(cmd_key(USER_ID)))
    eauid = make_auth_id(cipher, FIXED_NOW, seeded_random())
    assert validator.match_auth_id(eauid, FIXED_NOW).user == user()
    validator.remove(USER_ID)
    with pytest.raises(AuthenticationError, match="timestamp -500 s off"):
        validator.match_auth_id(
            make_auth_id(cipher, FIXED_NOW, seeded_random(1)), FIXED_NOW
        )


def test_a_first_contact_is_found_among_thousands_of_users() -> None:
    ids = [uuid.UUID(int=n) for n in range(1, 3001)]
    validator = UserValidator([user(user_id=one) for one in ids], now=FIXED_NOW)
    for chosen in (ids[0], ids[1777], ids[-1]):
        cipher = aes_128_ecb(auth_id_key(cmd_key(chosen)))
        eauid = make_auth_id(cipher, FIXED_NOW, seeded_random(chosen.int))
        assert validator.match_auth_id(eauid, FIXED_NOW).user.id == chosen
    validator.remove(ids[5])
    cipher = aes_128_ecb(auth_id_key(cmd_key(ids[5])))
    with pytest.raises(AuthenticationError, match="unknown user"):
        validator.match_auth_id(
            make_auth_id(cipher, FIXED_NOW, seeded_random()), FIXED_NOW
        )


def test_only_block_aligned_time_prefixes_are_candidates() -> None:
    blocks = (
        b"\x01" * 16 + bytes(4) + b"\x02" * 12 + b"\x03\x00\x00\x00\x00" + b"\x04" * 11
    )
    blocks += b"\xff" * 4 + b"\x05" * 12
    assert _time_prefixed_blocks(blocks) == [1, 3]
