"""VMess connections as sans-IO state machines: ServerConnection, ClientConnection.

Theory of operation (h11's surface): ``receive_data(data)`` only buffers, and
``b""`` means the transport reached EOF. ``next_event()`` parses as far as the
buffer allows and returns one event or :data:`NEED_DATA`. The ``send_*``
methods return the bytes to write, in order, and never block.

Each side has two independent halves. The receive half walks
HEADER -> BODY -> CLOSED (or REJECTED on the server, BROKEN after a peer
error); the send half walks IDLE -> OPEN -> CLOSED. The client sends its
header in ``start()`` together with the first payload and never waits for the
response header (spec 5.4); the server writes nothing until its runtime asks
for the response header, which must travel with the first response data.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from vtrio.protocol.events import NEED_DATA, Event, NeedData
from vtrio.protocol.instruction import Request

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtrio.config.model import VMessUser
    from vtrio.protocol.commands import SwitchAccount
    from vtrio.protocol.validator import UserValidator

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "ReceiveState",
    "Request",
    "SendState",
    "ServerConnection",
]


class ReceiveState(enum.Enum):
    """Where the receive half of a connection is."""

    HEADER = enum.auto()  # waiting for the peer's request / response header
    BODY = enum.auto()  # decoding chunks
    CLOSED = enum.auto()  # EndOfStream was returned
    REJECTED = enum.auto()  # server: Rejected was returned; drain, then close
    BROKEN = enum.auto()  # the peer sent invalid bytes; nothing more is parsed


class SendState(enum.Enum):
    """Where the send half of a connection is."""

    IDLE = enum.auto()  # client before start(), server before send_response()
    OPEN = enum.auto()
    CLOSED = enum.auto()  # send_eof() was called


class ServerConnection:
    """The server side of one VMess connection."""

    def __init__(
        self,
        validator: UserValidator,
        *,
        now: int,
        random: Callable[[int], bytes],
        disable_insecure_encryption: bool = False,
        aead_forced: bool = False,
    ) -> None:
        """Args:
        validator: the inbound's users, auth-ID table, legacy table and
            replay filters (shared by every connection of the inbound).
        now: Unix seconds when the connection was accepted.
        random: a source of random bytes (``os.urandom`` at run time).
        disable_insecure_encryption: refuse securities none and aes-128-cfb.
        aead_forced: refuse legacy (MD5) headers even for alterId > 0 users.
        """
        raise NotImplementedError

    @property
    def receive_state(self) -> ReceiveState:
        raise NotImplementedError

    @property
    def send_state(self) -> SendState:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the transport; ``b""`` means EOF.

        Raises:
            LocalProtocolError: data after EOF.
        """
        raise NotImplementedError

    def next_event(self) -> Event | NeedData:
        """The next event: RequestHeader or Rejected first, then Data /
        Datagram and finally EndOfStream.

        Raises:
            RemoteProtocolError: a body chunk failed after the handshake, or
                the transport ended mid-chunk (close without a drain).
        """
        raise NotImplementedError

    def send_response(self, command: SwitchAccount | None = None) -> bytes:
        """The response header; send it with the first response data.

        Raises:
            LocalProtocolError: no accepted request yet, or sent twice.
        """
        raise NotImplementedError

    def send_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stream data (TCP or Mux) as chunks; the response header must be sent."""
        raise NotImplementedError

    def send_datagram(self, payload: bytes | bytearray | memoryview) -> bytes:
        """One UDP datagram as one chunk (Cmd 2 only; not empty)."""
        raise NotImplementedError

    def send_eof(self) -> bytes:
        """End the response direction: the empty chunk unless the user has
        NoTerminationSignal or the body is unchunked (then b"")."""
        raise NotImplementedError


class ClientConnection:
    """The client side of one VMess connection."""

    def __init__(
        self,
        account: VMessUser,
        request: Request,
        *,
        now: int,
        random: Callable[[int], bytes],
        machine: str,
    ) -> None:
        """Args:
        account: the outbound user (id, alter_id, security, experiments).
        request: command and destination.
        now: Unix seconds, for the auth ID or the legacy timestamp.
        random: a source of random bytes (keys, nonces, padding, jitter).
        machine: ``platform.machine()``, to resolve security ``auto``.
        """
        raise NotImplementedError

    @property
    def receive_state(self) -> ReceiveState:
        raise NotImplementedError

    @property
    def send_state(self) -> SendState:
        raise NotImplementedError

    def start(self, first_payload: bytes = b"") -> bytes:
        """The request header and, if given, the first payload, in one buffer.

        For UDP a non-empty ``first_payload`` is the first datagram. Write it
        in one send: sing-box wants at least 100 bytes in its first read.
        """
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the transport; ``b""`` means EOF."""
        raise NotImplementedError

    def next_event(self) -> Event | NeedData:
        """ResponseHeader first, then Data / Datagram and finally EndOfStream.

        Raises:
            RemoteProtocolError: bad response header (tag, ``V``), a bad chunk,
                or EOF before the header or mid-chunk.
        """
        raise NotImplementedError

    def send_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stream data as chunks (after ``start()``)."""
        raise NotImplementedError

    def send_datagram(self, payload: bytes | bytearray | memoryview) -> bytes:
        """One UDP datagram as one chunk (Cmd 2 only; not empty)."""
        raise NotImplementedError

    def send_eof(self) -> bytes:
        """End the request direction (the empty chunk unless NoTerminationSignal)."""
        raise NotImplementedError
