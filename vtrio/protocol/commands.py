"""Response-header commands; SwitchAccount is the only one (spec 5.2, 5.5).

Theory of operation: a server with a dynamic-port detour tells the client a
new port and account in the response header. The data carries its own FNV1a,
and a client that cannot parse a command ignores it (it still skips its bytes),
so :func:`decode_command` returns None instead of raising.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from vtrio.errors import LocalProtocolError
from vtrio.protocol.instruction import fnv1a32

SWITCH_ACCOUNT = 0x01
MAX_COMMAND_DATA = 255


@dataclass(frozen=True, slots=True)
class SwitchAccount:
    """Move to ``port`` with a new account for ``valid_minutes`` minutes.

    ``host`` empty means "the address you dialled", which is what v2ray sends.
    """

    port: int
    id: uuid.UUID
    alter_id: int = 0
    level: int = 0
    valid_minutes: int = 1
    host: str = ""


def encode_command(command: SwitchAccount) -> tuple[int, bytes]:
    """The command byte and the ``CmdData`` (FNV1a first) for a response.

    Raises:
        LocalProtocolError: a field does not fit.
    """
    host = command.host.encode("ascii")
    try:
        payload = b"".join(
            (
                bytes((len(host),)),
                host,
                struct.pack(">H", command.port),
                command.id.bytes,
                struct.pack(
                    ">HBB",
                    command.alter_id,
                    command.level & 0xFF,
                    command.valid_minutes,
                ),
            )
        )
    except (struct.error, ValueError) as exc:
        raise LocalProtocolError(f"SwitchAccount field out of range: {exc}") from exc
    data = struct.pack(">I", fnv1a32(payload)) + payload
    if len(data) > MAX_COMMAND_DATA:
        raise LocalProtocolError("SwitchAccount host too long")
    return SWITCH_ACCOUNT, data


def decode_command(command: int, data: bytes) -> SwitchAccount | None:
    """The command in a response header, or None for anything unusable."""
    if command != SWITCH_ACCOUNT or len(data) <= 4:
        return None
    (checksum,) = struct.unpack_from(">I", data)
    payload = data[4:]
    if fnv1a32(payload) != checksum:
        return None
    host_length = payload[0]
    end = 1 + host_length + 2 + 16 + 4
    if len(payload) < end:
        return None
    offset = 1 + host_length
    try:
        host = payload[1:offset].decode("ascii")
    except UnicodeDecodeError:
        return None
    (port,) = struct.unpack_from(">H", payload, offset)
    user_id = uuid.UUID(bytes=payload[offset + 2 : offset + 18])
    alter_id, level, valid_minutes = struct.unpack_from(">HBB", payload, offset + 18)
    return SwitchAccount(port, user_id, alter_id, level, valid_minutes, host)
