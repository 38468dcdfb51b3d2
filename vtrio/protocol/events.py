"""Events the VMess connections hand to the runtime (h11's event style).

Theory of operation: ``next_event()`` on a connection returns one of these or
the :data:`NEED_DATA` sentinel. They are plain values, frozen and slotted, so
the runtime can match on them and tests can compare them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vtrio.config.model import VMessUser
from vtrio.protocol.address import Address
from vtrio.protocol.commands import SwitchAccount
from vtrio.protocol.instruction import Command, Option, SecurityType


class NeedData(enum.Enum):
    """Type of :data:`NEED_DATA`; an enum so ``is not NEED_DATA`` narrows."""

    NEED_DATA = enum.auto()


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """Server side: a client was authenticated and asks for ``command``.

    ``address`` is None only for :attr:`Command.MUX`. ``legacy`` tells an MD5
    header from an AEAD one (for the log and for policy).
    """

    user: VMessUser
    command: Command
    address: Address | None
    port: int
    security: SecurityType
    options: Option
    legacy: bool


@dataclass(frozen=True, slots=True)
class Rejected:
    """Server side: the handshake failed; nothing may be written back.

    The runtime reads and discards ``drain`` more bytes (0 = close at once)
    under the handshake deadline, then closes (spec 9.1). ``reason`` is for the
    log only.
    """

    drain: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """Client side: the server's response header arrived and was valid."""

    command: SwitchAccount | None = None


@dataclass(frozen=True, slots=True)
class Data:
    """Stream bytes (TCP or Mux); never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram (Cmd 2): exactly one chunk on the wire."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer finished its direction: an empty chunk or a clean EOF."""


Event = RequestHeader | Rejected | ResponseHeader | Data | Datagram | EndOfStream
