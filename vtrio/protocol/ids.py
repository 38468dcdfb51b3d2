"""User IDs: parsing, cmdKey, the legacy alter-ID chain, ``auto`` (spec 1, 4.3).

Theory of operation: every key in VMess comes from the 16 raw UUID bytes. The
cmdKey keys the auth ID and both header modes; alter IDs only key the legacy
HMAC. Strings that are not UUIDs map to UUIDv5 under the nil namespace, as
Xray and sing do. ``auto`` is resolved from the CPU architecture the runtime
passes in, as sing does (v2ray asks the CPU for AES instructions).
"""

from __future__ import annotations

import functools
import hashlib
import uuid

from vtrio.errors import LocalProtocolError
from vtrio.protocol.instruction import SecurityType

CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
_ALTER_ID_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
_ALTER_ID_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"
MAX_CUSTOM_ID_LENGTH = 30
# Architectures with AES instructions that Go uses for GCM (sing's rule).
_AES_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "s390x"})


def parse_user_id(text: str) -> uuid.UUID:
    """A configured ``id``: canonical or dashless UUID, or a 1-30 byte string.

    Raises:
        LocalProtocolError: empty, or a non-UUID string longer than 30 bytes.
    """
    stripped = text.strip()
    if len(stripped) in (32, 36):
        try:
            return uuid.UUID(hex=stripped)
        except ValueError:
            pass
    if not 0 < len(text.encode()) <= MAX_CUSTOM_ID_LENGTH:
        raise LocalProtocolError("an id is a UUID or a string of 1 to 30 bytes")
    return uuid.uuid5(uuid.UUID(int=0), text)


@functools.lru_cache(maxsize=4096)  # a client derives it for every tunnel
def cmd_key(user_id: uuid.UUID) -> bytes:
    """MD5(UUID bytes || the cmdKey salt): keys the auth ID and the headers."""
    return hashlib.md5(user_id.bytes + CMD_KEY_SALT).digest()


@functools.lru_cache(maxsize=256)  # a legacy client picks one per tunnel
def alter_ids(primary: uuid.UUID, count: int) -> tuple[uuid.UUID, ...]:
    """The legacy alter IDs derived one from the other, starting at ``primary``."""
    chain: list[uuid.UUID] = []
    current = primary.bytes
    for _ in range(count):
        state = hashlib.md5(current + _ALTER_ID_SALT)
        candidate = state.digest()
        while candidate == current:
            # Upstream keeps appending to the same running state (spec 1.4).
            state.update(_ALTER_ID_RETRY_SALT)
            candidate = state.digest()
        chain.append(uuid.UUID(bytes=candidate))
        current = candidate
    return tuple(chain)


def auto_security(machine: str) -> SecurityType:
    """What ``auto`` means on this CPU architecture (``platform.machine()``)."""
    if machine.lower() in _AES_MACHINES:
        return SecurityType.AES_128_GCM
    return SecurityType.CHACHA20_POLY1305


def chacha_key(key: bytes) -> bytes:
    """MD5(k) || MD5(MD5(k)): the 32-byte ChaCha20 key of a 16-byte key (spec 6.4)."""
    first = hashlib.md5(key).digest()
    return first + hashlib.md5(first).digest()
